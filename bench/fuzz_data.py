"""A long fuzz run of the .npy / .npz readers: the property of tests/unit/test_fuzz_data.py (arrays
consistent with their bytes, or DataError; never another exception, never an allocation beyond the
bytes present) over many more examples than the suite's bounded run.

Usage: python bench/fuzz_data.py [--examples N] [--seed S]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000, help="examples per property")
    parser.add_argument("--seed", type=int, default=None, help="fix Hypothesis' seed for a repeatable run")
    args = parser.parse_args()
    long_run = settings(max_examples=args.examples, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))
    for name, strategy, check in (("npy", npy_files(), check_npy), ("npz", npz_files(), check_npz)):
        run = long_run(given(strategy)(check))
        if args.seed is not None:
            run = seed(args.seed)(run)
        start = time.perf_counter()
        run()
        print(f"{name}: {args.examples} examples passed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
