"""Code run with IPython (``execute_request``): outputs collected as nbformat v4 dicts.

What :class:`dlexec.RuntimeService` runs with ``execute_code``/``execute_file``, and how a
kernel without a startup hook gets dlexec's worker installed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .models import ExecutionResponse

if TYPE_CHECKING:
    from .channel import KernelChannel

#: Seconds an interrupted execution is given to answer.
INTERRUPT_GRACE = 5.0


def execute(channel: KernelChannel, code: str, timeout: float | None = None, *, silent=False, store_history=True):
    """Run code with IPython; returns ``(reply content, outputs)``.

    Outputs are nbformat v4 output dicts. On ``timeout`` the kernel is interrupted and
    the call waits ``INTERRUPT_GRACE`` seconds more for the interrupted reply; the reply
    then has ``status: "timeout"``.
    """
    outputs: list[dict] = []
    displays: dict[str, list[dict]] = {}  # display_id -> its outputs, for updates
    state = {"reply": None, "idle": False}
    done = threading.Event()

    def collect(msg):
        msg_type = msg["header"]["msg_type"]
        if msg_type == "status":
            if msg["content"].get("execution_state") == "idle":
                state["idle"] = True
                if state["reply"] is not None:
                    done.set()
                    return True
            return False
        if msg_type == "clear_output":
            outputs.clear()
        elif msg_type in ("stream", "display_data", "execute_result", "error"):
            output = _output_from_msg(msg)
            _merge_output(outputs, output)
            display_id = (msg["content"].get("transient") or {}).get("display_id")
            if display_id:
                displays.setdefault(display_id, []).append(output)
        elif msg_type == "update_display_data":
            display_id = (msg["content"].get("transient") or {}).get("display_id")
            for output in displays.get(display_id, ()):
                output["data"] = msg["content"].get("data", {})
                output["metadata"] = msg["content"].get("metadata", {})
        return False

    def on_reply(msg):
        state["reply"] = msg["content"]
        if state["idle"]:
            done.set()
        return state["idle"]

    content = {
        "code": code,
        "silent": silent,
        "store_history": store_history,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": False,
    }
    def on_error(exc):
        state["error"] = exc
        done.set()

    channel.request("shell", "execute_request", content, on_reply=on_reply, on_output=collect,
                 on_lost=lambda reason: done.set(), on_error=on_error)
    if not done.wait(timeout):
        channel.runtime.interrupt()
        done.wait(INTERRUPT_GRACE)
        reply = dict(state["reply"] or {})
        reply["status"] = "timeout"
        return reply, outputs
    if state.get("error") is not None:
        raise state["error"]
    if state["reply"] is None:
        raise channel.lost_error()
    return state["reply"], outputs


def run_cell(session, code: str, timeout: float | None) -> ExecutionResponse:
    """Run one cell with IPython; its outputs and whether it succeeded."""
    reply, outputs = session.execute(code, timeout=timeout)
    status = reply.get("status")
    if status == "ok":
        return ExecutionResponse(True, "Code executed successfully", outputs)
    if status == "timeout":
        return ExecutionResponse(False, f"Execution timed out after {timeout:g} s; the kernel was interrupted",
                                 outputs)
    if status == "aborted":
        return ExecutionResponse(False, "Execution was aborted", outputs)
    return ExecutionResponse(False, f"{reply.get('ename')}: {reply.get('evalue')}", outputs)


def run_cells(session, cells: list[str], timeout: float | None) -> ExecutionResponse:
    """Run cells in order, stopping at the first that fails (``timeout`` applies to each)."""
    outputs: list = []
    response = ExecutionResponse(True, "Code executed successfully", outputs)
    for cell in cells:
        step = run_cell(session, cell, timeout)
        outputs.extend(step.execute_response)
        if not step.success:
            response.success, response.message = False, step.message
            break
    return response


def code_cells(path: Path) -> list[str]:
    """A ``.py`` file as one cell, or a notebook's code cells in order."""
    if path.suffix != ".ipynb":
        return [path.read_text()]
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def _output_from_msg(msg: dict) -> dict:
    """An nbformat v4 output from an IOPub message (as ``nbformat.v4.output_from_msg``,
    whose import pulls in jsonschema and takes seconds: too slow for every kernel start)."""
    msg_type, content = msg["header"]["msg_type"], msg["content"]
    if msg_type == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if msg_type == "error":
        return {"output_type": "error", "ename": content.get("ename", ""), "evalue": content.get("evalue", ""),
                "traceback": content.get("traceback", [])}
    output = {"output_type": msg_type, "metadata": content.get("metadata", {}), "data": content.get("data", {})}
    if msg_type == "execute_result":
        output["execution_count"] = content.get("execution_count")
    return output


def _merge_output(outputs: list[dict], output: dict) -> None:
    """Append an output; consecutive text on the same stream becomes one output."""
    if (
        output["output_type"] == "stream"
        and outputs
        and outputs[-1]["output_type"] == "stream"
        and outputs[-1]["name"] == output["name"]
    ):
        outputs[-1]["text"] += output["text"]
    else:
        outputs.append(output)

