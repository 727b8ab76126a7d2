"""Derive the built-in performance presets from the measured data in data/perf-models.

Why a script: the presets in `operator/dopd_operator/profile_presets.py` are plain literals (importing the
operator must do no I/O, and the data is not shipped with the package), so this script is the
single reproducible record of where every literal came from and how far it is from its source points.
The derivations live in the package beside it, `bench/profile_derivation/`, a module per data source.

    python bench/derive_profiles.py                      # prints the literals, rewrites docs/profiles.md
    python bench/derive_profiles.py --data /path/to/perf-models --no-write

Each `derive_*` function there returns a `Derivation`: fitted coefficients (seconds), the points they were
fitted to, and the error against those points. The fits use `dopd_operator.profile_fit` (NNLS on relative
error), the same fitter `dopd profile` uses on a live worker, so a preset and a user's own profile are
comparable. tests/operator/test_profiles.py loads this script and reads `derive_splitwise` and
`derive_all` off it to check the pasted literals still match.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dopd_forecaster.datasets import PERF_MODELS, data_path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DOC = REPO / "docs" / "profiles.md"
# The derivations are the package beside this script: put bench/ on the path also when the script is
# loaded by file location (tests/operator/test_profiles.py), not run.
sys.path.insert(0, str(REPO / "bench"))

from profile_derivation.render import build, derive_all, presets_module, python_literal  # noqa: E402
from profile_derivation.splitwise import _splitwise_rows, derive_splitwise  # noqa: E402

# what tests/operator/test_profiles.py reads off this script, beside `main`
__all__ = ["_splitwise_rows", "derive_all", "derive_splitwise", "main"]


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the perf-models folder (default: $DOPD_DATA_DIR/perf-models, else data/perf-models)",
    )
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="where to write profiles.md")
    parser.add_argument("--no-write", action="store_true", help="print only, do not rewrite the doc")
    parser.add_argument("--presets", type=Path, default=None, help="also (re)write this profile_presets.py")
    args = parser.parse_args(argv)
    derivations, doc = build(args.data if args.data is not None else data_path(PERF_MODELS))
    for d in derivations:
        out(python_literal(d))
    if args.presets is not None:
        args.presets.write_text(presets_module(derivations))
        out(f"wrote {args.presets}")
    if not args.no_write:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(doc)
        out(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
