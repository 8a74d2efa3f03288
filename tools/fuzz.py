"""Long fuzzing run of the whole prune pipeline (tests/test_fuzz.py) with fresh random examples.

Usage:
    python tools/fuzz.py --examples 500 [--seed 1234]

CI runs the same test with 30 derandomized examples; this runs as many as asked, seeded so a failure can be
replayed with the same ``--seed``. Prints the hypothesis statistics (how often each mode and the op without
a rule were drawn) and exits non-zero on the first failing example, which hypothesis shrinks and prints.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="examples to run (default 500)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a random one, printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    env = dict(os.environ, ONNXPRUNE_FUZZ_EXAMPLES=str(args.examples), ONNXPRUNE_FUZZ_SEED=str(seed))
    print(f"fuzzing {args.examples} examples, seed {seed}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py",
                           "--hypothesis-show-statistics"], cwd=ROOT, env=env, check=False)
    print(f"{'passed' if proc.returncode == 0 else 'FAILED'}: {args.examples} examples, seed {seed}, "
          f"{time.perf_counter() - started:.0f} s")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
