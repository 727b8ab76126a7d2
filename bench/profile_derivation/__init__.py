"""The derivation of the built-in performance presets, one module per data source.

bench/derive_profiles.py runs it. `derivation` holds what the sources share (units, model shapes, KV
arithmetic, the `Derivation` record); `distserve`, `splitwise` and `llama3_h100` derive the presets from
their data; `figure1` sets `opt-13b-a100` against DistServe's Figure 1; `render` lists the presets and
writes profile_presets.py and docs/profiles.md.
"""
