"""Progress bars for maps and collections of futures (tqdm; notebook widgets in Jupyter).

:func:`progress` wraps either

* a collection of futures: it yields them *as they complete* (like ``as_completed``),
  counting the failed ones; or
* an iterator of results, such as ``executor.map(...)``: it yields the results in their
  order, and counts an exception raised by the iterator as a failure before re-raising it.

The bar shows done and failed counts and the rate. It is shown only when the program runs
in a terminal (stdout is a TTY) or in a notebook, unless ``disable=False`` forces it. In a
notebook it is a widget when ipywidgets is installed, and tqdm's text bar otherwise (without
the ``TqdmWarning`` that ``tqdm.auto`` prints then).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, as_completed
from typing import Any


def progress(items: Iterable, total: int | None = None, *, desc: str | None = None,
             disable: bool | None = None, **tqdm_options: Any) -> Iterator:
    """Show a progress bar while iterating over futures or results (see the module)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            pass
    if disable is None:
        disable = not _interactive()
    if not isinstance(items, Iterator) and _all_futures(items):
        return _futures(list(items), total, desc, disable, tqdm_options)
    return _results(items, total, desc, disable, tqdm_options)


def _bar(total, desc, disable, options):
    if _in_notebook() and notebook_widgets():
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm

    options.setdefault("unit", "task")
    options.setdefault("dynamic_ncols", True)
    return tqdm(total=total, desc=desc, disable=disable, **options)


def _futures(futures: list[Future], total, desc, disable, options) -> Iterator[Future]:
    with _bar(total, desc, disable, options) as bar:
        failed = 0
        for future in as_completed(futures):
            if not future.cancelled() and future.exception() is not None:
                failed += 1
                bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
            yield future


def _results(results: Iterable, total, desc, disable, options) -> Iterator:
    with _bar(total, desc, disable, options) as bar:
        for result in _counting(results, bar):  # noqa: UP028 - not "yield from": a throw() stays here
            yield result


def _counting(results: Iterable, bar) -> Iterator:
    iterator = iter(results)
    while True:
        try:
            result = next(iterator)
        except StopIteration:
            return
        except BaseException:
            bar.set_postfix(failed=1)
            raise
        bar.update(1)
        yield result


def _all_futures(items) -> bool:
    try:
        return bool(items) and all(isinstance(item, Future) for item in items)
    except TypeError:
        return False


def _interactive() -> bool:
    try:
        return sys.stdout.isatty() or _in_notebook()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # noqa: BLE001
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def notebook_widgets() -> bool:
    """Whether this notebook kernel can show ipywidgets: ipywidgets imports, and the front end
    is not a Qt console or Spyder (which tqdm.auto rules out the same way)."""
    if any(name == "QT_API" or name.startswith("SPYDER") for name in os.environ):
        return False
    try:
        from tqdm import notebook
    except Exception:  # noqa: BLE001 - a broken ipywidgets or IPython: no widgets
        return False
    return getattr(notebook, "IProgress", None) is not None
