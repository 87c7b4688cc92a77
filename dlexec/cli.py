"""The ``dlexec`` command line: the Datalayer account, environments, runtimes and snapshots.

Tables by default, JSON with ``--json`` (runtime tokens masked as ``***`` unless
``--show-tokens``). Errors print ``dlexec: <message>`` on stderr and exit with 1 (2 for usage
errors and bad settings).

The API key comes from ``$DATALAYER_API_KEY`` (or ``$DATALAYER_EXTERNAL_TOKEN``) or
``--token-file PATH``; ``--token`` works too but warns: a command line shows in the process
list and the shell history.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from .datalayer import DatalayerClient, DatalayerError, RuntimeInfo, Snapshot, terminate_command
from .secrets import check_token, mask_keys


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name, default in (("token", None), ("token_file", None), ("run_url", None), ("iam_url", None),
                          ("json", False), ("show_tokens", False)):
        if not hasattr(args, name):  # the global options default to SUPPRESS (see _parser)
            setattr(args, name, default)
    if not getattr(args, "handler", None):  # a group without its command: ``dlexec runtimes``
        getattr(args, "parser", parser).print_help(sys.stderr)
        return 2
    if args.token and args.token_file:
        getattr(args, "parser", parser).error("give --token or --token-file, not both")
    try:  # the token and the URLs are checked before any request
        client = DatalayerClient(_token(args), args.run_url, args.iam_url)
    except ValueError as exc:
        print(f"dlexec: {exc}", file=sys.stderr)
        return 2
    try:
        with client:
            return args.handler(client, args) or 0
    except DatalayerError as exc:
        print(f"dlexec: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dlexec: interrupted", file=sys.stderr)
        return 130


def _token(args) -> str | None:
    """The token from ``--token-file`` (its trailing line break removed) or ``--token`` (with a
    warning), else None (the client reads the environment). A ``ValueError`` if it is unusable."""
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as file:
                token = file.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror or type(exc).__name__
            raise ValueError(f"cannot read --token-file {args.token_file}: {reason}") from None
        if not token:
            raise ValueError(f"--token-file {args.token_file} is empty")
        return check_token(token, f"--token-file {args.token_file}")
    if args.token:
        print("dlexec: warning: --token shows the token in the process list and the shell history; "
              "set $DATALAYER_API_KEY or use --token-file PATH instead", file=sys.stderr)
        return check_token(args.token, "--token")
    return None


# -- commands ------------------------------------------------------------------------------------

def _whoami(client: DatalayerClient, args) -> None:
    profile = client.whoami()
    if _json_out(args, profile):
        return
    name = " ".join(filter(None, (profile.get("first_name_t"), profile.get("last_name_t"))))
    rows = [("handle", profile.get("handle_s")), ("name", name), ("email", profile.get("email_s")),
            ("uid", profile.get("uid")), ("server", client.run_url)]
    print(_table(None, rows))


def _envs_ls(client: DatalayerClient, args) -> None:
    envs = client.list_environments()
    if _json_out(args, [e.raw for e in envs]):
        return
    rows = [(e.name, e.title, e.language, f"{e.burning_rate:g}", f"{e.burning_rate * 600:.4g}") for e in envs]
    print(_table(("NAME", "TITLE", "LANGUAGE", "CREDITS/S", "CREDITS/10 MIN"), rows, "no environments"))


def _runtimes_ls(client: DatalayerClient, args) -> None:
    runtimes = client.list_runtimes()
    if not _json_out(args, [r.raw for r in runtimes]):
        print(_runtime_table(runtimes))


def _runtimes_create(client: DatalayerClient, args) -> None:
    runtime = client.create_runtime(args.environment, args.time_reservation, args.name, args.snapshot)
    if not _json_out(args, runtime.raw):
        print(_runtime_table([runtime]))
        print(f"\nJupyter Server: {runtime.ingress}")
        if args.show_tokens:
            print(f"Jupyter Server token: {runtime.token}")
        print(f"terminate it with: {terminate_command(runtime.pod_name)}")


def _runtimes_terminate(client: DatalayerClient, args) -> int:
    if args.all == bool(args.pod_names):
        _usage(args, "give POD_NAME... or --all (not both)")
    pod_names = [r.pod_name for r in client.list_runtimes()] if args.all else args.pod_names
    results, failed = [], False
    for pod_name in pod_names:
        try:
            deleted = client.delete_runtime(pod_name)
            results.append({"pod_name": pod_name, "deleted": deleted})
            message = f"terminated {pod_name}" if deleted else f"{pod_name}: already gone"
        except DatalayerError as exc:
            failed = True
            results.append({"pod_name": pod_name, "deleted": False, "error": str(exc)})
            message = f"dlexec: {exc}"
        if not args.json:
            print(message, file=sys.stderr if "error" in results[-1] else sys.stdout)
    if not _json_out(args, results) and not pod_names:
        print("no runtimes")
    return 1 if failed else 0


def _snapshots_ls(client: DatalayerClient, args) -> None:
    snapshots = client.list_snapshots()
    if not _json_out(args, [s.raw for s in snapshots]):
        print(_snapshot_table(snapshots))


def _snapshots_create(client: DatalayerClient, args) -> None:
    snapshot = client.create_snapshot(args.pod_name, args.name, args.description, stop=not args.no_stop)
    if not _json_out(args, snapshot.raw):
        print(_snapshot_table([snapshot]))


def _snapshots_delete(client: DatalayerClient, args) -> int:
    deleted = client.delete_snapshot(args.snapshot)
    if not _json_out(args, {"snapshot": args.snapshot, "deleted": deleted}):
        print(f"deleted snapshot {args.snapshot}" if deleted else f"{args.snapshot}: already gone")
    return 0


# -- output --------------------------------------------------------------------------------------

def _json_out(args, data: Any) -> bool:
    """Print ``data`` as JSON if ``--json`` was given, tokens masked unless ``--show-tokens``; whether it was."""
    if args.json:
        data = json.loads(json.dumps(data, default=lambda o: dataclasses.asdict(o)))
        if not args.show_tokens:
            data = mask_keys(data)
        json.dump(data, sys.stdout, indent=2)
        print()
        return True
    return False


def _runtime_table(runtimes: list[RuntimeInfo]) -> str:
    rows = [(r.pod_name, r.given_name, r.environment_name, _local_time(r.started_at), _local_time(r.expired_at),
             "" if r.burning_rate is None else f"{r.burning_rate:g}") for r in runtimes]
    return _table(("POD NAME", "GIVEN NAME", "ENVIRONMENT", "STARTED", "EXPIRES", "CREDITS/S"), rows, "no runtimes")


def _snapshot_table(snapshots: list[Snapshot]) -> str:
    rows = [(s.uid, s.name, s.environment, s.status, s.description) for s in snapshots]
    return _table(("UID", "NAME", "ENVIRONMENT", "STATUS", "DESCRIPTION"), rows, "no snapshots")


def _table(headers: tuple | None, rows: list[tuple], empty: str = "") -> str:
    """Rows as left-aligned columns two spaces apart, under ``headers`` when given."""
    if not rows:
        return empty
    lines = [headers, *rows] if headers else rows
    lines = [["" if cell is None else str(cell) for cell in line] for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def _local_time(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else ""


# -- arguments -----------------------------------------------------------------------------------

def _usage(args, message: str) -> None:
    args.parser.error(message)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    # The global options are accepted before or after the command: ``dlexec --json runtimes ls``
    # and ``dlexec runtimes ls --json``. SUPPRESS keeps a later default from hiding an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    options = common.add_argument_group("global options")
    options.add_argument("--token-file", default=argparse.SUPPRESS, metavar="PATH",
                         help="read the Datalayer API key from this file (default: $DATALAYER_API_KEY, "
                              "then $DATALAYER_EXTERNAL_TOKEN)")
    options.add_argument("--token", default=argparse.SUPPRESS,
                         help="the API key itself: avoid it, the process list and your shell history show it")
    options.add_argument("--run-url", default=argparse.SUPPRESS,
                         help="runtimes API base URL (default: $DATALAYER_RUN_URL or https://prod1.datalayer.run)")
    options.add_argument("--iam-url", default=argparse.SUPPRESS,
                         help="IAM API base URL (default: $DATALAYER_IAM_URL or the run URL)")
    options.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                         help="print JSON to stdout instead of tables")
    options.add_argument("--show-tokens", action="store_true", default=argparse.SUPPRESS,
                         help="show runtime tokens (masked as *** in --json output by default; "
                              "`runtimes create` prints the new runtime's token)")

    parser = argparse.ArgumentParser(prog="dlexec", parents=[common],
                                     description="Manage Datalayer runtimes, environments and snapshots.")
    parser.add_argument("--version", action="version", version=f"dlexec {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(group, name: str, handler: Callable, help: str, **kwargs) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help, description=help, **kwargs)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    def group(name: str, help: str):
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(parser=sub)
        return sub.add_subparsers(title="commands", metavar="COMMAND")

    command(commands, "whoami", _whoami, "show the account the token belongs to")

    envs = group("envs", "environments runtimes are created from")
    command(envs, "ls", _envs_ls, "list the environments", aliases=["list"])

    runtimes = group("runtimes", "live runtimes (billed while they run)")
    command(runtimes, "ls", _runtimes_ls, "list your runtimes", aliases=["list"])
    create = command(runtimes, "create", _runtimes_create, "create a runtime")
    create.add_argument("environment", metavar="ENV", help="environment name (see: dlexec envs ls)")
    create.add_argument("--name", help="the runtime's given name; keep it unique: after an unclear answer "
                                       "the runtime is found by it")
    create.add_argument("--time-reservation", type=float, default=10.0, metavar="MINUTES",
                        help="credits reserved for this many minutes (default: 10)")
    create.add_argument("--snapshot", metavar="NAME_OR_UID", help="start from this snapshot")
    terminate = command(runtimes, "terminate", _runtimes_terminate, "delete runtimes")
    terminate.add_argument("pod_names", nargs="*", metavar="POD_NAME")
    terminate.add_argument("--all", action="store_true", help="delete every runtime you have")

    snapshots = group("snapshots", "runtime snapshots")
    command(snapshots, "ls", _snapshots_ls, "list your snapshots", aliases=["list"])
    snap = command(snapshots, "create", _snapshots_create, "snapshot a runtime")
    snap.add_argument("pod_name", metavar="POD_NAME")
    snap.add_argument("--name", help="snapshot name (default: snapshot-<random>)")
    snap.add_argument("--description", help="snapshot description (default: the name)")
    snap.add_argument("--no-stop", action="store_true", help="keep the runtime running after the snapshot")
    delete = command(snapshots, "delete", _snapshots_delete, "delete a snapshot")
    delete.add_argument("snapshot", metavar="UID_OR_NAME")
    return parser


if __name__ == "__main__":
    sys.exit(main())
