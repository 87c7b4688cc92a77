"""A loop of maps on warm kernels: a reusable executor, a shared table, a progress bar, stats.
Needs numpy (`pip install -e '.[examples]'`). Run it from the repository root or from ``examples/``:

    python examples/warm_pool.py

What a notebook that re-runs a cell does: `get_reusable_executor` returns the same running
kernels every time (no second-long start), `share` sends the lookup table to each kernel
once rather than with every task, and `stats()` says what the work cost.
"""

import time

try:
    import numpy as np
except ImportError:
    raise SystemExit("examples/warm_pool.py needs numpy: pip install -e '.[examples]' (or pip install numpy)")

import dlexec


def score(weights, row):
    """A task that uses a large shared argument."""
    return float(weights @ row)


def main():
    rng = np.random.default_rng(0)
    rows = [rng.random(1000) for _ in range(2000)]
    for step in range(3):
        started = time.perf_counter()
        ex = dlexec.get_reusable_executor(2, timeout=60)  # the same executor at every step
        weights = ex.share(rng.random(1000) * step)  # ~8 KB here; a model or a table in real life
        scores = list(ex.map(score, [weights] * len(rows), rows, progress=True))
        print(f"step {step}: mean score {np.mean(scores):.2f} in {time.perf_counter() - started:.2f} s")
    print(ex.stats().summary())
    ex.shutdown()


if __name__ == "__main__":
    main()
