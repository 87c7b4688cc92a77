"""Compare dlexec's three backends (local, jupyter, datalayer) on one machine, in one run.

Every backend gets a ``dlexec.DatalayerExecutor`` with the same number of workers
(``--workers``, default 2):

- ``local``: local ipykernels (``backend="local"``);
- ``jupyter``: kernels on a real ``jupyter server`` that this script starts on 127.0.0.1
  (``tests.conftest.JupyterServer``; ``backend="jupyter", url=..., token=...``);
- ``datalayer``: Datalayer runtimes served by the local stand-in of the Datalayer API
  (``tests.datalayer_standin.DatalayerStandIn``: each runtime is a real Jupyter Server
  behind a reverse proxy; ``backend="datalayer"`` with ``DATALAYER_API_KEY`` and
  ``DATALAYER_RUN_URL`` set). ``--no-datalayer`` skips it.

Measured, for each backend:

1. round trip: ``ex.submit(identity, x).result()`` on a warm pool, one call at a time,
   median of 200 calls after a warm-up (ms);
2. payload: a task that returns its 64 MB float64 NumPy argument, median of 5 (s), and the
   implied transfer rate (MB/s, 128 MB moved per round trip: there and back);
3. start-up: from constructing the executor to its first result, median of 3 (s; the
   shutdown is not timed);
4. map: ``list(ex.map(square, range(2_000), chunksize=1))``, median of 3 (s);
5. for reference, not dlexec: the median round trip of a bare ``kernel_info_request`` to a
   kernel of the same kind, over the same transport (ZeroMQ for local; the kernel WebSocket
   of the server, resp. of the stand-in's ingress, for the others), to tell the protocol's
   own latency from dlexec's.

The jupyter and datalayer figures are measured over loopback (127.0.0.1): they show what the
protocol (HTTP, WebSocket, the server's relaying, the stand-in's proxy) costs, not a network.

Usage::

    python benchmarks/backends.py [--no-datalayer] [--only local|jupyter|datalayer] [--workers 2]
                                  [--payload-mb 64] [--no-reference] [--quick] [--json out.json]

Every executor, server and stand-in is stopped, also on errors, Ctrl-C and SIGTERM; after
each backend, the script lists the jupyter/ipykernel processes that appeared during the run
and are still alive (there should be none).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's dlexec, and tests.conftest / tests.datalayer_standin

from dlexec.runtimes.jupyter import _connect_tcp  # noqa: E402

#: Generous bound on any single wait, so that a hang becomes an error instead of a stuck run.
TIMEOUT = 300.0

# -- the tasks (module level; they travel by value, the remote kernels do not see this file) ----


def identity(x):
    return x


def square(x):
    return x * x


def worker_pid(delay):
    import os
    import time

    time.sleep(delay)
    return os.getpid()


# -- backends: context managers yielding factory(n) -> executor ----------------------------------


@contextlib.contextmanager
def local_backend():
    import dlexec

    yield lambda n: dlexec.DatalayerExecutor(n, backend="local"), {"kind": "local"}


@contextlib.contextmanager
def jupyter_backend():
    import dlexec
    from tests.conftest import JupyterServer

    with tempfile.TemporaryDirectory(prefix="dlexec-bench-jupyter-") as tmp:
        server = JupyterServer(Path(tmp))
        try:
            server.start()
            yield (lambda n: dlexec.DatalayerExecutor(n, backend="jupyter", url=server.url, token=server.token),
                   {"kind": "jupyter", "url": server.url, "token": server.token})
        finally:
            if getattr(server, "log", None) is not None:  # start() got as far as opening its log
                server.stop()


@contextlib.contextmanager
def datalayer_backend():
    import dlexec
    from tests.datalayer_standin import DatalayerStandIn

    saved = {}
    standin = DatalayerStandIn(token="secret-token")
    try:
        standin.start()
        for key, value in standin.env_vars().items():
            saved[key] = os.environ.get(key)
            os.environ[key] = value
        yield lambda n: dlexec.DatalayerExecutor(n, backend="datalayer"), {"kind": "datalayer", "standin": standin}
    finally:
        standin.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


BACKENDS = {"local": local_backend, "jupyter": jupyter_backend, "datalayer": datalayer_backend}
TITLES = {"local": "local", "jupyter": "jupyter", "datalayer": "datalayer stand-in"}

# -- bare kernel_info_request, the protocol's own latency (reference) ------------------------------


def bare_local(calls: int) -> float:
    """Median ms of ``kernel_info_request`` round trips to a local ipykernel over ZeroMQ
    (jupyter-client's blocking client; IPC sockets, as dlexec's local backend uses)."""
    from jupyter_client import KernelManager

    with tempfile.TemporaryDirectory(prefix="dlexec-bench-ipc-") as tmp:
        km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(tmp, "kernel"))
        kc = None
        try:
            km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            track()
            for _ in range(20):
                kc.kernel_info(reply=True, timeout=TIMEOUT)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                kc.kernel_info(reply=True, timeout=TIMEOUT)
                times.append(time.perf_counter() - start)
            return statistics.median(times) * 1000
        finally:
            if kc is not None:
                kc.stop_channels()
            if km.has_kernel:
                km.shutdown_kernel(now=True)


def bare_websocket(base_url: str, token: str, calls: int, ingress: bool = False) -> float:
    """Median ms of ``kernel_info_request`` round trips over a Jupyter Server's kernel WebSocket
    (default JSON protocol), to a kernel started and deleted here through the REST API. With
    ``ingress``, authenticated as a Datalayer runtime's ingress requires (Bearer on HTTP, the
    token as a query parameter on the WebSocket)."""
    import requests
    from websockets.sync.client import connect

    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}" if ingress else f"token {token}"
    kernel_id = None
    try:
        deadline = time.monotonic() + 120
        while True:  # a stand-in runtime's ingress answers 502 while its server warms up
            response = http.post(f"{base_url}/api/kernels", json={"name": "python3"}, timeout=60)
            if response.ok or response.status_code not in (502, 503, 504) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        response.raise_for_status()
        kernel_id = response.json()["id"]
        parts = urllib.parse.urlsplit(base_url)
        session = uuid.uuid4().hex
        ws_url = f"ws://{parts.netloc}{parts.path}/api/kernels/{kernel_id}/channels?session_id={session}"
        ws_headers = {"Authorization": f"token {token}"}
        if ingress:
            ws_url += "&" + urllib.parse.urlencode({"token": token})
            ws_headers = {}
        sock = _connect_tcp(parts.hostname, parts.port, 60)  # dlexec's socket: quick ACKs, no Nagle
        with connect(ws_url, sock=sock, additional_headers=ws_headers,
                     max_size=None, compression=None, open_timeout=60) as ws:
            track()

            def kernel_info() -> None:
                msg_id = uuid.uuid4().hex
                ws.send(json.dumps({
                    "header": {"msg_id": msg_id, "msg_type": "kernel_info_request", "username": "bench",
                               "session": session, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                               "version": "5.3"},
                    "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell", "buffers": [],
                }))
                while True:
                    frame = ws.recv(timeout=TIMEOUT)
                    if isinstance(frame, str):
                        msg = json.loads(frame)
                        if msg.get("channel") == "shell" and msg["parent_header"].get("msg_id") == msg_id:
                            return

            for _ in range(20):
                kernel_info()
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                kernel_info()
                times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000
    finally:
        if kernel_id is not None:
            with contextlib.suppress(Exception):
                http.delete(f"{base_url}/api/kernels/{kernel_id}", timeout=30)
        http.close()


def bare_datalayer(standin, calls: int) -> float:
    """As :func:`bare_websocket`, on a runtime created (and deleted) through the stand-in's API."""
    import requests

    api = f"{standin.url}/api/runtimes/v1/runtimes"
    headers = {"Authorization": f"Bearer {standin.token}"}
    response = requests.post(api, headers=headers, timeout=60,
                             json={"type": "notebook", "environment_name": "python-cpu-env", "credits_limit": 10})
    response.raise_for_status()
    runtime = response.json()["runtime"]
    try:
        return bare_websocket(runtime["ingress"], runtime["token"], calls, ingress=True)
    finally:
        requests.delete(f"{api}/{runtime['pod_name']}", headers=headers, timeout=60)


# -- measuring ------------------------------------------------------------------------------------

seen_pids: set[int] = set()  # kernel pids seen in tasks (meaningful for local kernels)


def median_time(fn, repeat: int) -> float:
    """Median wall-clock seconds of ``repeat`` calls of ``fn()``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def warm_up(ex, workers: int) -> None:
    """Run short tasks until every worker has answered (kernels start lazily)."""
    pids: set = set()
    for _ in range(50):
        pids = set(ex.map(worker_pid, [0.05] * (4 * workers), timeout=TIMEOUT))
        seen_pids.update(pids)
        if len(pids) >= workers:
            return
    print(f"  note: only {len(pids)} of {workers} workers answered during the warm-up", file=sys.stderr)


def measure(name: str, args, results: dict, problems: list) -> None:
    """All measurements for one backend, into ``results`` (s; round trips in ms)."""
    with BACKENDS[name]() as (factory, context):

        def start_up():
            start = time.perf_counter()
            with factory(args.workers) as ex:
                ex.submit(identity, 1).result(timeout=TIMEOUT)
                elapsed = time.perf_counter() - start
                seen_pids.add(ex.submit(worker_pid, 0).result(timeout=TIMEOUT))
                track()
            return elapsed

        step(name, "start-up", problems, lambda: results.__setitem__(
            "startup", statistics.median([start_up() for _ in range(args.startup_repeat)])))

        payload = np.random.default_rng(0).random(args.payload_mb * 2**20 // 8)
        with factory(args.workers) as ex:
            warm_up(ex, args.workers)
            track()

            def roundtrip():
                for _ in range(20):
                    ex.submit(identity, 0).result(timeout=TIMEOUT)
                results["roundtrip"] = median_time(
                    lambda: ex.submit(identity, 1).result(timeout=TIMEOUT), args.calls) * 1000

            def mapping():
                list(ex.map(square, range(200), chunksize=1, timeout=TIMEOUT))  # warm-up
                results["map"] = median_time(
                    lambda: list(ex.map(square, range(args.tasks), chunksize=1, timeout=TIMEOUT)), args.repeat)

            def transfer():
                ex.submit(identity, payload[:1024]).result(timeout=TIMEOUT)
                back = ex.submit(identity, payload).result(timeout=TIMEOUT)
                if not np.array_equal(back, payload):
                    problems.append(f"{name}: the {args.payload_mb} MB payload came back different")
                del back
                results["payload"] = median_time(
                    lambda: ex.submit(identity, payload).result(timeout=TIMEOUT), args.payload_repeat)
                results["rate"] = 2 * args.payload_mb / results["payload"]

            step(name, "round trip", problems, roundtrip)
            step(name, "map", problems, mapping)
            step(name, "payload", problems, transfer)

        if not args.no_reference:
            def bare():
                if name == "local":
                    results["bare"] = bare_local(args.calls)
                elif name == "jupyter":
                    results["bare"] = bare_websocket(context["url"], context["token"], args.calls)
                else:
                    results["bare"] = bare_datalayer(context["standin"], args.calls)

            step(name, "bare kernel_info", problems, bare)


def step(name: str, what: str, problems: list, fn) -> None:
    """Run one measurement; a failure is reported and the other measurements go on."""
    print(f"  {what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - report it, keep the figures measured so far
        problems.append(f"{name}: {what} failed: {type(exc).__name__}: {exc}")
        print(f"    failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    print(f"    {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


# -- processes left behind ------------------------------------------------------------------------

#: pid -> command line of every descendant of this process seen while executors, servers and
#: stand-ins were running (local kernels, Jupyter Servers and their kernels: all children or
#: grandchildren of this process while they live, re-parented once it is gone).
tracked: dict[int, str] = {}


def track() -> None:
    """Record this process's descendants (call while the things to check later are running)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=False).stdout
    children: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        fields = line.split(None, 2)
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append((int(fields[0]), fields[2] if len(fields) > 2 else ""))
    todo = [os.getpid()]
    while todo:
        for pid, command in children.get(todo.pop(), ()):
            if pid not in tracked and not command.startswith("ps "):
                tracked[pid] = command
            todo.append(pid)


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def alive(pid: int, command: str) -> bool:
    """Whether ``pid`` still runs ``command`` (not a zombie, not a reused pid)."""
    if not running(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            now = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return False
    return now[:60] == command[:60]


def leftovers() -> list[str]:
    """The tracked processes (and kernel pids seen in tasks) still alive; clears both."""
    track()  # anything started since the last call and still running is ours and left behind
    for pid in seen_pids:
        if pid not in tracked and pid != os.getpid():
            tracked[pid] = "(a kernel pid seen in a task)"
    deadline = time.monotonic() + 5  # let the last processes exit
    while True:
        left = {pid: cmd for pid, cmd in tracked.items()
                if (running(pid) if cmd.startswith("(") else alive(pid, cmd))}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    tracked.clear()
    seen_pids.clear()
    return [f"{pid} {cmd[:150]}" for pid, cmd in sorted(left.items())]


# -- reporting ------------------------------------------------------------------------------------


def rows(args) -> list[tuple[str, str]]:
    return [
        ("roundtrip", f"round trip, submit(identity, x).result(), warm pool (ms, median of {args.calls})"),
        ("payload", f"{args.payload_mb} MB float64 array there and back (s, median of {args.payload_repeat})"),
        ("rate", f"implied transfer rate ({2 * args.payload_mb} MB per round trip, MB/s)"),
        ("startup", f"start-up, constructor to first result (s, median of {args.startup_repeat})"),
        ("map", f"map of {args.tasks:,} trivial tasks, chunksize=1 (s, median of {args.repeat})"),
        ("bare", f"reference, not dlexec: bare kernel_info_request round trip (ms, median of {args.calls})"),
    ]


def fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def ratio(a, b) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def checkout() -> str:
    """This checkout's commit, and whether dlexec/ had uncommitted changes (read at start-up)."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "dlexec"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"(commit {commit}{', with uncommitted changes in dlexec/' if dirty else ''})"


def header(args, names) -> str:
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    libs = ", ".join(f"{name} {version(name)}"
                     for name in ("jupyter_server", "jupyter_client", "ipykernel", "websockets", "dill", "numpy"))
    return "\n".join([
        f"# dlexec backends benchmark, {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"- platform: {platform.platform()}, {os.cpu_count()} CPUs",
        f"- Python {platform.python_version()}, {libs}, dlexec {version('dlexec')}"
        f"{' ' + args.checkout if args.checkout else ''}",
        (f"- backends: {', '.join(TITLES[n] for n in names)}; {args.workers} workers per executor; "
         "figures are medians"),
        ("- the jupyter and datalayer stand-in figures are measured over loopback (127.0.0.1), on this "
         "machine: they show the protocol's own cost (HTTP, WebSocket, the Jupyter Server's relaying, "
         "the stand-in's reverse proxy), not a network's"),
        ("- ratio = backend's figure / local's figure (for the transfer rate, > 1 means faster than local); "
         "n/a = not measured (see Problems below the table)"),
    ])


def table(results: dict, args) -> str:
    names = list(results)
    others = [n for n in names if n != "local" and "local" in results]
    lines = [
        "| measurement | " + " | ".join(TITLES[n] for n in names) + "".join(
            f" | {n} / local" for n in others) + " |",
        "|---" + "|--:" * (len(names) + len(others)) + "|",
    ]
    for key, label in rows(args):
        if args.no_reference and key == "bare":
            continue
        values = [results[n].get(key) for n in names]
        ratios = [ratio(results[n].get(key), results["local"].get(key)) for n in others]
        lines.append(f"| {label} | " + " | ".join(map(fmt, values)) + "".join(f" | {r}" for r in ratios) + " |")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise SystemExit(128 + signum)  # unwinds the with blocks: executors, servers, stand-in stop


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-datalayer", action="store_true", help="skip the datalayer stand-in backend")
    parser.add_argument("--only", choices=list(BACKENDS), action="append", help="measure only these backends")
    parser.add_argument("--workers", type=int, default=2, help="workers per executor (default 2)")
    parser.add_argument("--payload-mb", type=int, default=64, help="payload array size in MB (default 64)")
    parser.add_argument("--no-reference", action="store_true", help="skip the bare kernel_info_request row")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: fewer calls and repetitions")
    parser.add_argument("--json", metavar="PATH", help="also save the raw numbers as JSON")
    args = parser.parse_args(argv)
    args.calls = 50 if args.quick else 200
    args.payload_repeat = 2 if args.quick else 5
    args.startup_repeat = 1 if args.quick else 3
    args.repeat = 1 if args.quick else 3
    args.tasks = 500 if args.quick else 2_000

    args.checkout = checkout()
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)

    names = args.only or [n for n in BACKENDS if not (n == "datalayer" and args.no_datalayer)]
    results: dict = {}
    problems: list[str] = []
    left: dict[str, list[str]] = {}
    try:
        for name in names:
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            results[name] = {}
            try:
                measure(name, args, results[name], problems)
            except Exception as exc:  # noqa: BLE001 - e.g. the server did not start
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"  failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            left[name] = leftovers()
            print(f"  {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    finally:
        if results:
            print(header(args, list(results)))
            print()
            print(table(results, args))
            for name, procs in left.items():
                if procs:
                    print(f"\nWARNING: {name}: processes still alive after its executors, server and stand-in "
                          f"were stopped:\n  " + "\n  ".join(procs))
            if problems:
                print("\nProblems:\n- " + "\n- ".join(problems))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version(), "results": results, "leftovers": left,
                       "problems": problems,
                       "note": "medians in seconds, except roundtrip and bare in milliseconds, rate in MB/s"},
                      f, indent=2)
        print(f"\nraw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the with blocks have stopped the executors, servers and stand-in
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
