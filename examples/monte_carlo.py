"""Estimate pi with a Monte Carlo simulation spread over a pool of Jupyter kernels.

Run it from the repository root or from ``examples/``:

    python examples/monte_carlo.py                 # 8 million samples
    python examples/monte_carlo.py --samples 2e7   # more samples, a better estimate

The samples are split into chunks, each with its own seed; each chunk runs as one task
in a kernel and returns how many random points of the unit square fell inside the
quarter circle. The same chunks are then run serially here, for comparison.
"""

import argparse
import math
import os
import random
import sys
import time

try:
    from dlexec import DatalayerExecutor
except ImportError:  # a source checkout that is not installed: use the repository's copy
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
    from dlexec import DatalayerExecutor


def count_inside(seed, samples):
    """How many of ``samples`` random points of the unit square fall in the quarter circle."""
    rng = random.Random(seed)
    rand = rng.random
    inside = 0
    for _ in range(samples):
        x, y = rand(), rand()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside


def kernel_pid(_):
    time.sleep(0.2)  # long enough for an idle kernel to take the next one
    return os.getpid()


def report(label, inside, samples, seconds):
    estimate = 4 * inside / samples
    print(f"{label:<9} pi ~ {estimate:.6f}   error {estimate - math.pi:+.6f}   {seconds:6.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=float, default=8e6, help="number of random points (default 8e6)")
    parser.add_argument("--chunks", type=int, default=16, help="number of tasks (default 16)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="kernels (default: CPU count)")
    args = parser.parse_args()

    chunk = int(args.samples) // args.chunks
    samples = chunk * args.chunks
    seeds = range(args.chunks)
    print(f"{samples:,} samples in {args.chunks} chunks of {chunk:,}, {args.workers} kernels")

    with DatalayerExecutor(max_workers=args.workers) as ex:
        start = time.perf_counter()
        # Kernels start lazily, on the first tasks: start them all before timing the work.
        pids = set()
        while len(pids) < args.workers and time.perf_counter() - start < 30:
            pids.update(ex.map(kernel_pid, range(args.workers)))
        print(f"{len(pids)} kernels started in {time.perf_counter() - start:.2f} s")

        start = time.perf_counter()
        inside = sum(ex.map(count_inside, seeds, [chunk] * args.chunks))
        parallel = time.perf_counter() - start
    report("parallel", inside, samples, parallel)

    start = time.perf_counter()
    serial_inside = sum(count_inside(seed, chunk) for seed in seeds)
    serial = time.perf_counter() - start
    report("serial", serial_inside, samples, serial)

    assert inside == serial_inside  # same seeds, same points
    print(f"speed-up: {serial / parallel:.2f}x")
