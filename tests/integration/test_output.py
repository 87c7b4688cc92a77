"""What a task prints reaches the caller's stdout/stderr before its result (README: Output).

The output travels on IOPub and the result on the shell channel: two sockets (or, through a
Jupyter Server, two streams merged into one WebSocket), so the reply can arrive first. The
reply says how much the task printed, and the client holds the result until that much
output has been written here (for a short while at most).
"""

from __future__ import annotations

import sys

import pytest

import dlexec
from dlexec import DatalayerExecutor

pytestmark = pytest.mark.timeout(300)


def print_both(i):
    print(f"to stdout {i}")
    print(f"to stderr {i}", file=sys.stderr)
    return i


def print_and_return(i):
    print(f"task {i} says hello")
    return i


def print_a_lot(lines):
    for i in range(lines):
        print(f"line {i:06d} " + "x" * 90)
    return lines


def test_the_first_task_of_fresh_kernels_prints_before_its_result(backend, capsys):
    for attempt in range(8):
        with DatalayerExecutor(1) as ex:
            capsys.readouterr()
            assert ex.submit(print, "printed remotely", attempt).result() is None
            out = capsys.readouterr().out  # at once: no waiting here
            assert f"printed remotely {attempt}\n" in out, f"attempt {attempt}: the result came before the output"


def test_stdout_and_stderr_of_each_task_in_a_batch_come_before_its_result(backend, capsys):
    with DatalayerExecutor(1) as ex:
        ex.submit(int).result()
        capsys.readouterr()
        out = err = ""
        for i, result in enumerate(ex.map(print_both, range(300))):  # tiny tasks: they travel in batches
            captured = capsys.readouterr()
            out, err = out + captured.out, err + captured.err
            assert result == i
            assert f"to stdout {i}\n" in out and f"to stderr {i}\n" in err, f"task {i}: the result came first"


def test_a_task_that_prints_a_lot_has_printed_it_all_when_its_result_comes(backend, capsys):
    with DatalayerExecutor(1) as ex:
        capsys.readouterr()
        assert ex.submit(print_a_lot, 5000).result() == 5000  # 500 kB, in several stream messages
        out = capsys.readouterr().out
        assert out.count("\n") == 5000 and out.endswith(f"line {4999:06d} " + "x" * 90 + "\n")


def test_what_the_initializer_printed_comes_before_the_first_result(backend, capsys):
    with DatalayerExecutor(1, initializer=print, initargs=("the initializer says hello",)) as ex:
        assert ex.submit(pow, 2, 3).result() == 8
        assert "the initializer says hello\n" in capsys.readouterr().out


def test_a_task_that_prints_nothing_has_nothing_to_wait_for(backend, capsys):
    with DatalayerExecutor(1) as ex:
        assert [ex.submit(pow, 2, i).result() for i in range(20)] == [2**i for i in range(20)]
    assert capsys.readouterr().out == ""


# -- output that never comes: nothing waits for it for long --------------------------------------


@pytest.fixture
def on_jupyter_server(jupyter_server, monkeypatch):
    monkeypatch.setenv("DLEXEC_BACKEND", "jupyter")
    monkeypatch.setenv("DLEXEC_JUPYTER_URL", jupyter_server.url)
    monkeypatch.setenv("DLEXEC_JUPYTER_TOKEN", jupyter_server.token)
    return jupyter_server


MEGABYTES = 4  # more than a Jupyter Server passes in its 3 s window at its 1 MB/s default: it drops it


def test_a_result_does_not_wait_for_output_the_server_dropped(on_jupyter_server, monkeypatch, capsys):
    monkeypatch.setattr(dlexec.channel, "OUTPUT_WAIT", 3600.0)  # only the server's notice can end the wait
    with DatalayerExecutor(1) as ex:
        assert ex.submit(print, "x" * (MEGABYTES * 10**6)).result(timeout=120) is None
        assert "IOPub data rate exceeded" in capsys.readouterr().err
        assert ex.submit(print, "and then").result(timeout=60) is None  # the next one prints as usual
        assert capsys.readouterr().out == "and then\n"


def test_a_result_waits_for_missing_output_only_for_a_while(on_jupyter_server, monkeypatch, capsys):
    monkeypatch.setattr(dlexec.channel, "_RATE_LIMITED", ())  # as if the server had not said it
    monkeypatch.setattr(dlexec.channel, "OUTPUT_WAIT", 0.5)
    with DatalayerExecutor(1) as ex:
        futures = [ex.submit(print, "x" * (MEGABYTES * 10**6)), ex.submit(pow, 2, 10)]
        assert futures[0].result(timeout=60) is None and futures[1].result(timeout=60) == 1024
    assert "x" * 1000 not in capsys.readouterr().out
