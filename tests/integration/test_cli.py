"""The ``dlexec`` command line against the local stand-in of the Datalayer API (one real runtime)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dlexec
from dlexec.cli import main

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def env(standin, monkeypatch):
    """The stand-in's URLs and token, the way users configure the command line."""
    monkeypatch.delenv("DATALAYER_EXTERNAL_TOKEN", raising=False)
    for name, value in standin.env_vars().items():
        monkeypatch.setenv(name, value)
    yield
    standin.fail_deletes = False


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``dlexec argv...``: exit status, stdout, stderr."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "dlexec.cli", "--help"], check=False, capture_output=True,
                          text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "usage: dlexec" in done.stdout and "runtimes" in done.stdout and "--json" in done.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"dlexec {dlexec.__version__}"


def test_whoami_table_and_json(capsys, standin):
    status, out, _ = run(capsys, "whoami")
    assert status == 0
    assert "handle  standin-user" in out and "name    Stand In" in out and f"server  {standin.url}" in out
    status, out, _ = run(capsys, "whoami", "--json")
    assert status == 0 and json.loads(out)["handle_s"] == "standin-user"


def test_envs_table_is_aligned(capsys):
    status, out, _ = run(capsys, "envs", "ls")
    header, *rows = out.splitlines()
    assert status == 0 and header.split() == ["NAME", "TITLE", "LANGUAGE", "CREDITS/S", "CREDITS/10", "MIN"]
    assert [row.split()[0] for row in rows] == ["python-cpu-env", "python-gpu-env"]
    column = header.index("TITLE")
    assert all(row[column:].startswith("Python") and row[column - 2:column] == "  " for row in rows)
    assert rows[0].split()[-2:] == ["0.01", "6"]
    status, out, _ = run(capsys, "--json", "envs", "ls")
    assert [env["name"] for env in json.loads(out)] == ["python-cpu-env", "python-gpu-env"]


def test_runtime_create_list_snapshot_terminate(capsys, standin):
    assert run(capsys, "runtimes", "ls") == (0, "no runtimes\n", "")
    status, out, _ = run(capsys, "runtimes", "create", "python-cpu-env", "--name", "cli-rt", "--time-reservation", "1")
    try:
        assert status == 0
        [runtime] = standin.live_runtimes()
        pod = runtime["pod_name"]
        assert f"terminate it with: dlexec runtimes terminate {pod}" in out
        post = [r for r in standin.requests if r[0] == "POST" and r[1].endswith("/runtimes")][-1]
        assert post[2]["credits_limit"] == pytest.approx(0.6) and post[2]["given_name"] == "cli-rt"

        status, out, _ = run(capsys, "runtimes", "ls")
        header, row = out.splitlines()
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(runtime["expired_at"])))
        assert header.split()[:3] == ["POD", "NAME", "GIVEN"]
        assert row.split() == [pod, "cli-rt", "python-cpu-env", *row.split()[3:5], *expires.split(), "0.01"]
        for argv in (["--json", "runtimes", "ls"], ["runtimes", "ls", "--json"]):
            status, out, _ = run(capsys, *argv)
            assert status == 0 and [r["pod_name"] for r in json.loads(out)] == [pod]

        status, out, _ = run(capsys, "snapshots", "create", pod, "--name", "cli-snap", "--no-stop")
        assert status == 0 and out.splitlines()[0].split() == ["UID", "NAME", "ENVIRONMENT", "STATUS", "DESCRIPTION"]
        assert "cli-snap" in out and standin.live_runtimes() != []  # --no-stop: still running
        assert standin.requests[-2][2]["stop"] is False
        status, out, _ = run(capsys, "snapshots", "ls", "--json")
        assert [s["name"] for s in json.loads(out)] == ["cli-snap"]
        assert run(capsys, "snapshots", "delete", "cli-snap") == (0, "deleted snapshot cli-snap\n", "")
        assert run(capsys, "snapshots", "ls") == (0, "no snapshots\n", "")

        standin.fail_deletes = True
        status, out, err = run(capsys, "runtimes", "terminate", "--all")
        assert status == 1 and out == "" and "Traceback" not in err
        assert err.startswith(f"dlexec: Datalayer API: DELETE {standin.url}/api/runtimes/v1/runtimes/{pod} failed with 500:")
        standin.fail_deletes = False
        assert run(capsys, "runtimes", "terminate", "--all") == (0, f"terminated {pod}\n", "")
        assert standin.live_runtimes() == []
    finally:
        standin.fail_deletes = False
        for runtime in standin.live_runtimes():
            main(["runtimes", "terminate", runtime["pod_name"]])
    assert run(capsys, "runtimes", "terminate", pod) == (0, f"{pod}: already gone\n", "")
    assert run(capsys, "runtimes", "terminate", "--all") == (0, "no runtimes\n", "")
    status, out, _ = run(capsys, "--json", "runtimes", "terminate", pod)
    assert status == 0 and json.loads(out) == [{"pod_name": pod, "deleted": False}]


def test_api_errors_are_one_line_without_traceback(capsys, standin, monkeypatch):
    status, out, err = run(capsys, "--token", "wrong-token", "whoami")
    warning, err = err.split("\n", 1)  # --token warns that the process list shows it
    assert status == 1 and out == "" and "Traceback" not in err and warning.startswith("dlexec: warning: --token")
    assert err.startswith(f"dlexec: Datalayer API: GET {standin.url}/api/iam/v1/whoami failed with 401:")
    assert "DATALAYER_API_KEY" in err

    standin.fail_next("GET", r"/environments$", 500, "database is down")
    url = f"{standin.url}/api/runtimes/v1/environments"
    assert run(capsys, "envs", "ls") == (1, "", f"dlexec: Datalayer API: GET {url} failed with 500: database is down\n")

    status, _, err = run(capsys, "runtimes", "create", "nope")
    assert status == 1 and "unknown environment 'nope'; available: python-cpu-env, python-gpu-env" in err

    monkeypatch.delenv("DATALAYER_API_KEY")
    status, _, err = run(capsys, "runtimes", "ls")
    assert status == 1 and err.startswith("dlexec: Datalayer API: no token: set DATALAYER_API_KEY")
    monkeypatch.delenv("DATALAYER_RUN_URL")
    monkeypatch.delenv("DATALAYER_IAM_URL")
    status, out, err = run(capsys, "--token", standin.token, "--run-url", standin.url, "runtimes", "ls")
    assert (status, out) == (0, "no runtimes\n") and err.startswith("dlexec: warning: --token")


@pytest.mark.parametrize("argv", [["bogus"], ["runtimes", "terminate"], ["runtimes", "terminate", "x", "--all"],
                                  ["runtimes", "create"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "usage: dlexec" in capsys.readouterr().err


def test_a_group_alone_prints_its_help(capsys):
    status, out, err = run(capsys, "runtimes")
    assert status == 2 and out == "" and "usage: dlexec runtimes" in err
