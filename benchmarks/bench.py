"""Compare dlexec.DatalayerExecutor with other process pools, on one machine, in one run.

Every executor gets the same number of workers (``--workers``, default 2):
``dlexec.DatalayerExecutor`` (local Jupyter kernels), ``concurrent.futures.ProcessPoolExecutor``
(PPE), ``loky.ProcessPoolExecutor`` and, only if it is importable, ipyparallel (a local
``ipyparallel.Cluster``). Measured:

1. round trip: ``ex.submit(identity, x).result()`` on a warm pool, one call at a time (ms);
2. map: ``list(ex.map(square, range(10_000)))`` with ``chunksize=1`` and ``chunksize=100`` (s);
3. start-up: from constructing a new executor to its first result,
   ``Executor(n).submit(identity, 1).result()`` (s; the shutdown is not timed), and the
   same with a reused executor (``get_reusable_executor``, dlexec's and loky's) (ms);
4. payload: a task that returns its NumPy float64 argument (``--payload-mb``, 64 MB) (s),
   and the extra peak memory (RSS high-water mark over the resident size before the call,
   in multiples of the payload) in the caller and in the worker, with one worker;
5. joblib: ``Parallel(n_jobs=workers)`` with backend ``datalayer`` against joblib's default
   ``loky``: 2,000 tiny calls (auto-batching) and 40 calls of 25 ms each (s), the two backends
   taking turns call by call, so that both see the same load;
6. fresh process: a new Python runs a script that imports the library, builds an executor
   and waits for one trivial result (``abs(-1)``), for dlexec, PPE and loky (a subprocess per
   run): the import (s), the first result after the import (s) and the whole script's wall
   time, interpreter start and exit included (s). These run first, before the in-process
   measurements, the three libraries taking turns run by run; the libraries' bytecode is
   compiled first (as an installed package's is), into a temporary cache, not next to the
   sources.

Each figure is the median of ``--repeat`` runs (the round trip: of 200 calls; fewer runs, at
least one, once a measurement has taken 30 s: ipyparallel's 10,000 tasks). Pools are
warmed up first (tasks run until every worker has answered), so only start-up counts the
time to start workers. The ratio columns are dlexec's time divided by the peer's:
< 1 means dlexec is faster, 2.0 means dlexec takes twice as long.

Usage::

    python benchmarks/bench.py [--workers 2] [--repeat 5] [--quick] [--json out.json] [--png out.png]

The executors run one after the other (PPE first, so that its fork start method forks a
process without dlexec's threads); on a shared or busy machine, expect noise of 10-20 %.
Every executor is shut down, also on errors and Ctrl-C; after each executor, the script
checks that no worker process it saw (by ``os.getpid()`` in the tasks) is still alive.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's dlexec

# -- the tasks (module level, so that every executor can pickle them) ------------------------


def identity(x):
    return x


def square(x):
    return x * x


def worker_pid(delay):
    time.sleep(delay)
    return os.getpid()


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def _status(field: str) -> int:
    """A /proc/self/status memory figure, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak() -> int:
    """Reset this process's RSS high-water mark (Linux); returns the resident size now."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def peak() -> int:
    return _status("VmHWM")


# -- executors ----------------------------------------------------------------------------------


def dlexec_factory(n):
    import dlexec

    return dlexec.DatalayerExecutor(n)


def ppe_factory(n):
    return concurrent.futures.ProcessPoolExecutor(n)


def loky_factory(n):
    import loky

    return loky.ProcessPoolExecutor(n)


@contextlib.contextmanager
def ipyparallel_factory(n):
    import ipyparallel

    with ipyparallel.Cluster(n=n) as client:
        client[:].use_cloudpickle()  # the tasks live in __main__ (and use its imports)
        executor = client.executor()
        try:
            yield executor
        finally:
            executor.shutdown(wait=True)


def dlexec_reusable(n):
    import dlexec

    return dlexec.get_reusable_executor(n)


def loky_reusable(n):
    import loky

    return loky.get_reusable_executor(n)


REUSABLE = {"dlexec": dlexec_reusable, "loky": loky_reusable}


def executors() -> dict:
    """Name -> factory(n) returning a context manager that yields an executor."""
    found = {"dlexec": dlexec_factory, "ProcessPoolExecutor": ppe_factory, "loky": loky_factory}
    try:
        import ipyparallel  # noqa: F401
    except ImportError:
        pass
    else:
        found["ipyparallel"] = ipyparallel_factory
    return found


# -- measuring ----------------------------------------------------------------------------------

seen_pids: set[int] = set()  # worker processes seen, checked after each executor


def median_time(fn, repeat: int, budget: float = 30.0) -> float:
    """Median wall-clock seconds of ``repeat`` calls of ``fn()``, fewer (at least one) once
    ``budget`` seconds are spent: a slow peer (ipyparallel's 10,000 tasks) ends in time."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if sum(times) > budget:
            break
    return statistics.median(times)


def warm_up(ex, workers: int) -> None:
    """Run short tasks until every worker has answered (workers may start lazily)."""
    for _ in range(50):
        pids = set(ex.map(worker_pid, [0.05] * (4 * workers)))
        seen_pids.update(pids)
        if len(pids) >= workers:
            return
    print(f"  note: only {len(pids)} of {workers} workers answered during the warm-up", file=sys.stderr)


def measure(factory, args, results: dict) -> None:
    """All measurements for one executor, into ``results`` (seconds; round trip in ms)."""

    # Time from construction: for ipyparallel, entering the context starts its cluster.
    def start_up():
        start = time.perf_counter()
        with factory(args.workers) as ex:
            ex.submit(identity, 1).result()
            elapsed = time.perf_counter() - start
            seen_pids.add(ex.submit(worker_pid, 0).result())
        return elapsed

    results["startup"] = statistics.median([start_up() for _ in range(args.startup_repeat)])

    payload = np.random.default_rng(0).random(args.payload_mb * 2**20 // 8)
    with factory(args.workers) as ex:
        warm_up(ex, args.workers)
        for _ in range(20):
            ex.submit(identity, 0).result()
        results["roundtrip"] = median_time(lambda: ex.submit(identity, 1).result(), args.calls) * 1000
        if args.name == "dlexec":
            results["floor"] = median_time(kernel_info(ex), args.calls) * 1000
        for chunksize in (1, 100):
            try:
                list(ex.map(square, range(200), chunksize=chunksize))  # warm-up
            except TypeError:  # ipyparallel's executor has no chunksize
                if chunksize > 1:
                    continue
                chunksize = None
            options = {} if chunksize is None else {"chunksize": chunksize}
            run = lambda: list(ex.map(square, range(args.tasks), **options))  # noqa: E731
            results[f"map{chunksize or 1}"] = median_time(run, args.repeat)
        ex.submit(identity, payload[:1024]).result()
        back = ex.submit(identity, payload).result()
        if not np.array_equal(back, payload):
            print("  note: the payload came back different", file=sys.stderr)
        del back
        results["payload"] = median_time(lambda data=payload: ex.submit(identity, data).result(), args.repeat)
    measure_memory(factory, payload, results)
    del payload
    reusable = REUSABLE.get(args.name)
    if reusable is not None:
        ex = reusable(args.workers)
        try:
            warm_up(ex, args.workers)
            results["reuse"] = median_time(lambda: reusable(args.workers).submit(identity, 1).result(),
                                           args.calls) * 1000
        finally:
            ex.shutdown(wait=True)


def kernel_info(ex):
    """A bare ``kernel_info_request`` to one of the executor's kernels and its reply: the
    protocol's floor (no user code, no dlexec worker), through dlexec's own channel."""
    import threading

    channel = next(w for w in ex._pool.workers if w.state == "ready").session.channel

    def call():
        done = threading.Event()
        channel.request("shell", "kernel_info_request", {}, on_reply=lambda msg: done.set() or True)
        done.wait(10)

    return call


FRESH_SCRIPTS = {
    "dlexec": ("import dlexec", "dlexec.DatalayerExecutor"),
    "ProcessPoolExecutor": ("import concurrent.futures", "concurrent.futures.ProcessPoolExecutor"),
    "loky": ("import loky", "loky.ProcessPoolExecutor"),
}

FRESH_SCRIPT = """\
import time
t0 = time.perf_counter()
{import_line}
t1 = time.perf_counter()
with {factory}({workers}) as ex:
    ex.submit(abs, -1).result()
    t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def measure_fresh(names, args) -> dict:
    """A new Python per run: the import, the first result after it, the whole script's wall time.

    Run before anything else (no kernel or worker of the in-process measurements around), the
    libraries taking turns run by run, so that they see the same machine."""
    import subprocess
    import tempfile

    root = str(Path(__file__).resolve().parent.parent)
    runs: dict = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="dlexec-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")  # this checkout's dlexec
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")  # bytecode written there, not in the tree
        scripts = {}
        for name in names:
            import_line, factory = FRESH_SCRIPTS[name]
            scripts[name] = Path(tmp) / f"fresh_{name}.py"
            scripts[name].write_text(FRESH_SCRIPT.format(import_line=import_line, factory=factory,
                                                         workers=args.workers))
        for i in range(args.fresh_repeat + 1):  # the first round compiles the bytecode: not counted
            for name in names:
                start = time.perf_counter()
                done = subprocess.run([sys.executable, str(scripts[name])], capture_output=True, text=True, env=env,
                                      cwd=tmp, timeout=120)
                wall = time.perf_counter() - start
                if done.returncode != 0:
                    raise RuntimeError(f"the fresh-process script of {name} failed: {done.stderr.strip()[-500:]}")
                if i:
                    imported, first = map(float, done.stdout.split())
                    runs[name].append((imported, first, wall))
    return {name: {key: statistics.median(run[index] for run in found)
                   for key, index in (("fresh_import", 0), ("fresh_first", 1), ("fresh_wall", 2))}
            for name, found in runs.items()}


def measure_memory(factory, payload, results: dict) -> None:
    """Extra peak memory of one payload round trip, caller and worker side (one worker)."""
    try:
        with factory(1) as ex:
            ex.submit(identity, payload[:1024]).result()
            seen_pids.add(ex.submit(worker_pid, 0).result())
            worker_base = ex.submit(reset_peak).result()
            base = reset_peak()
            back = ex.submit(identity, payload).result()
            caller = peak() - base
            worker = ex.submit(peak).result() - worker_base
            del back
    except OSError as exc:  # no /proc/self/clear_refs here
        print(f"  note: memory not measured: {exc}", file=sys.stderr)
        return
    results["mem_caller"] = caller / payload.nbytes
    results["mem_worker"] = worker / payload.nbytes


def measure_joblib(args) -> dict:
    """joblib.Parallel with backend "datalayer" and "loky": the same calls, in one run, the two
    backends taking turns call by call (the datalayer block stays open, so its kernels stay warm;
    loky's executor is reused by joblib)."""
    import joblib

    import dlexec  # noqa: F401 - registers the "datalayer" backend

    workloads = {"joblib_tiny": (square, range(2000)), "joblib_sleep": (sleep_for, [0.025] * 40)}
    times: dict = {backend: {key: [] for key in workloads} for backend in ("loky", "datalayer")}
    datalayer = joblib.parallel_config(backend="datalayer", n_jobs=args.workers)
    try:
        configs = {"loky": {"backend": "loky"}, "datalayer": {"backend": datalayer.parallel_config["backend"]}}
        for backend, config in configs.items():  # warm both pools
            with joblib.parallel_config(n_jobs=args.workers, **config):
                joblib.Parallel()(joblib.delayed(worker_pid)(0.05) for _ in range(4 * args.workers))
        for key, (fn, inputs) in workloads.items():
            for _ in range(args.repeat):
                for backend, config in configs.items():
                    with joblib.parallel_config(n_jobs=args.workers, **config):
                        start = time.perf_counter()
                        joblib.Parallel()(joblib.delayed(fn)(x) for x in inputs)
                        times[backend][key].append(time.perf_counter() - start)
    finally:
        datalayer.__exit__(None, None, None)
    return {backend: {key: statistics.median(values) for key, values in found.items()}
            for backend, found in times.items()}


# -- reporting ----------------------------------------------------------------------------------


def rows(args) -> list[tuple[str, str]]:
    return [
        ("roundtrip", f"round trip, submit().result() (ms, median of {args.calls})"),
        ("floor", "kernel_info_request round trip: the protocol's floor (ms)"),
        ("map1", f"map {args.tasks:,} tasks, chunksize=1 (s)"),
        ("map100", f"map {args.tasks:,} tasks, chunksize=100 (s)"),
        ("startup", "start-up to first result (s)"),
        ("payload", f"payload {args.payload_mb} MB float64 round trip (s)"),
        ("mem_caller", "payload: extra peak memory in the caller (x payload)"),
        ("mem_worker", "payload: extra peak memory in the worker (x payload)"),
        ("reuse", "reused executor to first result (ms)"),
        ("fresh_import", "fresh process: the import (s)"),
        ("fresh_first", "fresh process: first result after the import (s)"),
        ("fresh_wall", "fresh process: the whole script, wall time (s)"),
    ]


JOBLIB_ROWS = [("joblib_tiny", "joblib: 2,000 tiny calls (s)"), ("joblib_sleep", "joblib: 40 calls of 25 ms (s)")]


def fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def ratio(a, b) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def header(args) -> str:
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    libs = ", ".join(f"{name} {version(name)}"
                     for name in ("jupyter_client", "ipykernel", "dill", "loky", "numpy", "ipyparallel"))
    return "\n".join([
        f"# dlexec benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"- platform: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- {libs}",
        f"- {args.workers} workers per executor; figures are medians "
        f"({args.repeat} runs, start-up {args.startup_repeat}, fresh process {args.fresh_repeat}, "
        f"round trip {args.calls} calls); "
        "ratio = dlexec time / peer time, < 1 means dlexec is faster",
    ])


def joblib_table(found: dict) -> str:
    lines = ["| joblib.Parallel | backend loky | backend datalayer | datalayer / loky |", "|---|--:|--:|--:|"]
    for key, label in JOBLIB_ROWS:
        a, b = found.get("datalayer", {}).get(key), found.get("loky", {}).get(key)
        lines.append(f"| {label} | {fmt(b)} | {fmt(a)} | {ratio(a, b)} |")
    return "\n".join(lines)


def table(results: dict, args) -> str:
    names = list(results)
    peers = [n for n in ("ProcessPoolExecutor", "loky", "ipyparallel") if n in results]
    short = {"ProcessPoolExecutor": "PPE"}
    lines = [
        "| measurement | " + " | ".join(names) + " | "
        + " | ".join(f"dlexec / {short.get(p, p)}" for p in peers) + " |",
        "|---" + "|--:" * (len(names) + len(peers)) + "|",
    ]
    for key, label in rows(args):
        values = [results[n].get(key) for n in names]
        ratios = [ratio(results["dlexec"].get(key), results[p].get(key)) for p in peers]
        lines.append(f"| {label} | " + " | ".join(map(fmt, values)) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def save_png(results: dict, args, path: str, found: dict | None = None) -> None:
    """A bar chart of dlexec's time (or memory) over each peer's, one group per measurement."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\nnote: matplotlib is not installed, {path} was not written")
        return
    series: dict[str, dict[str, float]] = {}
    for peer in (p for p in ("ProcessPoolExecutor", "loky", "ipyparallel") if p in results):
        for key, label in rows(args):
            a, b = results["dlexec"].get(key), results[peer].get(key)
            if a is not None and b:
                series.setdefault(f"dlexec / {peer}", {})[label] = a / b
    a, b = results["dlexec"].get("roundtrip"), results["dlexec"].get("floor")
    if a and b:
        series.setdefault("dlexec / protocol floor", {})[rows(args)[0][1]] = a / b
    for key, label in JOBLIB_ROWS:
        a, b = (found or {}).get("datalayer", {}).get(key), (found or {}).get("loky", {}).get(key)
        if a is not None and b:
            series.setdefault("joblib datalayer / loky", {})[label] = a / b
    labels = [label for _, label in rows(args) + JOBLIB_ROWS if any(label in values for values in series.values())]
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(labels) + 1.5))
    height = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ys = [y + i * height for y, label in enumerate(labels) if label in values]
        ax.barh(ys, [values[label] for label in labels if label in values], height, label=name)
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([y + height * (len(series) - 1) / 2 for y in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("dlexec / peer (< 1: dlexec is faster or uses less memory)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nbar chart written to {path}")


def leftovers() -> list[int]:
    """The worker processes used since ``seen_pids`` was cleared that are still alive."""
    time.sleep(1)  # let the last processes exit
    alive = []
    for pid in sorted(seen_pids - {os.getpid()}):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie: exited, not yet reaped
        except OSError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
        alive.append(pid)
    seen_pids.clear()
    return alive


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers per executor (default 2)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 5, --quick 2)")
    parser.add_argument("--payload-mb", type=int, default=64, help="payload array size in MB (default 64)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: 2,000 tasks, fewer repetitions")
    parser.add_argument("--json", metavar="PATH", help="also save the raw numbers as JSON")
    parser.add_argument("--png", metavar="PATH", help="also save a bar chart of the ratios (needs matplotlib)")
    parser.add_argument("--no-joblib", action="store_true", help="skip the joblib comparison")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.startup_repeat = 2 if args.quick else 3
    args.fresh_repeat = 3 if args.quick else 7
    args.tasks = 2_000 if args.quick else 10_000
    args.calls = 50 if args.quick else 200

    results, left = {}, {}
    factories = executors()
    print("measuring fresh processes ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        fresh = measure_fresh(list(FRESH_SCRIPTS), args)
    except Exception as exc:  # noqa: BLE001 - report it, measure the rest
        print(f"  fresh processes failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        fresh = {}
    print(f"  {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    # PPE first: it forks (Linux) before any dlexec thread exists in this process.
    for name in ("ProcessPoolExecutor", "loky", "ipyparallel", "dlexec"):
        if name not in factories:
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        results[name] = dict(fresh.get(name, {}))
        args.name = name
        try:
            measure(factories[name], args, results[name])
        except Exception as exc:  # noqa: BLE001 - report it, keep the figures measured so far
            print(f"  {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        left[name] = leftovers()
        print(f"  {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    results = {name: results[name] for name in ("dlexec", "ProcessPoolExecutor", "loky", "ipyparallel")
               if name in results}

    found = {}
    if not args.no_joblib:
        print("measuring joblib ...", file=sys.stderr, flush=True)
        try:
            found = measure_joblib(args)
        except ImportError:
            print("  joblib is not installed: skipped", file=sys.stderr)

    print(header(args))
    print()
    print(table(results, args))
    if found:
        print()
        print(joblib_table(found))
    for name, pids in left.items():
        if pids:
            print(f"\nWARNING: {name}: worker processes still alive after shutdown: {pids}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version(), "results": results, "joblib": found,
                       "leftover_pids": left,
                       "note": "medians in seconds, except roundtrip in milliseconds"}, f, indent=2)
        print(f"\nraw numbers written to {args.json}")
    if args.png:
        save_png(results, args, args.png, found)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the executors' with blocks have shut them down
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
