"""Fuzz `load_model` far longer than the test suite does: the same strategy and property as
tests/unit/test_fuzz_model.py (mutated model bytes must load or raise ModelError).
Usage: python bench/fuzz_model.py [--examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from tests.unit.test_fuzz_model import loads_or_refuses, mutated_models  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000, help="mutated models to try")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (random by default)")
    args = parser.parse_args()
    run = settings(max_examples=args.examples, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))(given(mutated_models())(loads_or_refuses))
    if args.seed is not None:
        run = seed(args.seed)(run)
    start = time.perf_counter()
    run()
    sys.stderr.write(f"{args.examples} mutated models: every one loaded or raised ModelError "
                     f"({time.perf_counter() - start:.1f} s)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
