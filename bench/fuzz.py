"""Long fuzz runs: the properties of tests/unit/test_fuzz_model.py (mutated model bytes load or raise
ModelError) and tests/unit/test_fuzz_data.py (.npy/.npz contents read consistently with their bytes,
or DataError; never another exception, never an allocation beyond the bytes present), with many more
examples than the suite's bounded runs.

Usage: python bench/fuzz.py [--only model|npy|npz] [--examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from tests.unit.test_fuzz_data import check_npy, check_npz, npy_files, npz_files  # noqa: E402
from tests.unit.test_fuzz_model import loads_or_refuses, mutated_models  # noqa: E402

PROPERTIES = {"model": (mutated_models, loads_or_refuses), "npy": (npy_files, check_npy),
              "npz": (npz_files, check_npz)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(PROPERTIES), action="append", help="run these properties only")
    parser.add_argument("--examples", type=int, default=20_000, help="examples per property")
    parser.add_argument("--seed", type=int, default=None, help="fix Hypothesis' seed for a repeatable run")
    args = parser.parse_args()
    long_run = settings(max_examples=args.examples, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))
    for name in args.only or PROPERTIES:
        strategy, check = PROPERTIES[name]
        run = long_run(given(strategy())(check))
        if args.seed is not None:
            run = seed(args.seed)(run)
        start = time.perf_counter()
        run()
        print(f"{name}: {args.examples} examples passed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
