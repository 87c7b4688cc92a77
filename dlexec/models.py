"""What :class:`dlexec.RuntimeService` returns and describes, in the Datalayer SDK's shapes."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: What ``ExecutionResponse.model_dump()`` returns, in order: the SDK's fields.
_DUMP_FIELDS = ("success", "message", "execute_response", "stdout", "stderr")


@dataclasses.dataclass
class ExecutionResponse:
    """What running code produced.

    ``execute_response`` holds nbformat v4 outputs (``stream``, ``execute_result``,
    ``display_data``, ``error``). ``stdout`` and ``stderr`` are the text of the stdout and
    stderr streams; ``stderr`` also ends with the error's traceback, if any.
    """

    success: bool
    message: str | None = None
    execute_response: list = dataclasses.field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(o["text"] for o in self.execute_response if _is_stream(o, "stdout"))

    @property
    def stderr(self) -> str:
        parts = [o["text"] for o in self.execute_response if _is_stream(o, "stderr")]
        for output in self.execute_response:
            if output.get("output_type") == "error":
                parts.append(_ANSI.sub("", "\n".join(output.get("traceback") or [])) + "\n")
        return "".join(parts)

    @property
    def error(self) -> dict | None:
        """The ``error`` output (``ename``, ``evalue``, ``traceback``), if the code raised."""
        return next((o for o in self.execute_response if o.get("output_type") == "error"), None)

    @property
    def result(self) -> dict | None:
        """The ``execute_result`` mime bundle of the last expression, if any."""
        found = [o for o in self.execute_response if o.get("output_type") == "execute_result"]
        return found[-1]["data"] if found else None

    def echo(self) -> None:
        """Write the output to this process's stdout and stderr (``debug=True``)."""
        sys.stdout.write(self.stdout)
        sys.stderr.write(self.stderr)

    def model_dump(self, *, include: set | None = None, exclude: set | None = None, **_: Any) -> dict:
        """The response as a dict with the SDK's (pydantic) field names: ``success``, ``message``,
        ``execute_response``, ``stdout``, ``stderr``. ``include``/``exclude`` pick fields, as in pydantic."""
        return {name: (list(self.execute_response) if name == "execute_response" else getattr(self, name))
                for name in _DUMP_FIELDS
                if (include is None or name in include) and not (exclude and name in exclude)}

    def model_dump_json(self, *, indent: int | None = None, include: set | None = None,
                        exclude: set | None = None, **_: Any) -> str:
        """:meth:`model_dump` as JSON (values JSON cannot hold are written as text)."""
        return json.dumps(self.model_dump(include=include, exclude=exclude), indent=indent, default=str)

    def __repr__(self) -> str:
        return (f"ExecutionResponse(success={self.success!r}, message={self.message!r}, "
                f"stdout={self.stdout!r}, stderr={self.stderr!r})")


@dataclasses.dataclass
class RuntimeModel:
    """A runtime's configuration and state, with the fields of the SDK's ``RuntimeModel``.

    Secrets are kept out of the repr (a secret is never shown), but are there to read:
    ``token`` (the Datalayer API key used), ``external_token``, ``jupyter_token`` (the
    runtime's own) and ``runtime`` (the server's RUNTIME object, which holds it).
    ``started_at``/``expired_at`` keep the type the server sent (the stand-in and the API
    send strings of epoch seconds). ``kernel_client`` is dlexec's channel to the kernel.
    """

    name: str
    environment: str
    time_reservation: float
    run_url: str
    iam_url: str
    backend: str
    pod_name: str | None = None
    ingress: str | None = None
    reservation_id: str | None = None
    uid: str | None = None
    burning_rate: float | None = None
    jupyter_token: str | None = dataclasses.field(default=None, repr=False)
    started_at: str | float | None = None
    expired_at: str | float | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    external_token: str | None = dataclasses.field(default=None, repr=False)
    runtime: dict = dataclasses.field(default_factory=dict, repr=False)
    kernel_client: Any = dataclasses.field(default=None, repr=False)
    kernel_id: str | None = None
    executing: bool = False
    url: str = ""  # the SDK's legacy alias of run_url
    credits_per_second: float | None = None  # the SDK's legacy name of burning_rate
    extra: dict | None = None

    def __post_init__(self) -> None:
        self.url = self.url or self.run_url

    @property
    def credits_limit(self) -> float | None:
        """Credits reserved: burning rate (credits/s) x 60 x ``time_reservation`` (minutes), as the SDK computes it."""
        if self.burning_rate is None:
            return None
        return self.burning_rate * 60.0 * self.time_reservation


def _is_stream(output: dict, name: str) -> bool:
    return output.get("output_type") == "stream" and output.get("name") == name
