"""The operator's Prometheus metrics layer, one preset per engine (dopd, vllm, sglang).

- `promql`: label-value escaping, selectors, both spellings of colon names, answer shapes (pure);
- `estimators`: histogram quantiles, means, SLO attainment, arrival rate, burstiness and trend, shared
  with the simulator's observer (pure);
- `presets`: which series carry each Observation field per engine, and the query set of a spec (pure);
- `readings`: Prometheus answers -> Observation, unknown values None with the reason (pure);
- `source`: `MetricsSource`, the only module that talks to Prometheus.

This package imports none of its modules here, so that the simulator can use `estimators` without
loading an HTTP client. docs/metrics.md describes every series read and every rule.
"""
