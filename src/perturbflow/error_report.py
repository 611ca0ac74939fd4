"""Errors a user can fix, printed as one short block instead of a 200-line traceback.

Bad input is found before any long work (:class:`~perturbflow.exceptions.InputError`), a run
stopped by SIGTERM says where it resumes
(:class:`~perturbflow.models.training.fit.TrainingStopped`),
a catalog file that cannot be read or a parameter of the wrong type is Kedro's own error.
For these the traceback says nothing the message does not, and Kedro's rich traceback puts
the message at the end of ~200 lines. :func:`short_report` turns them into a few lines:
what is wrong (the message names the file, column or value and what was expected), where
(the node or catalog entry), and how to get the whole traceback. Any other exception is a
bug and keeps its full traceback.

``kedro run`` gets this through :class:`ErrorReportHooks` (``settings.HOOKS``), which wraps
``sys.excepthook``; ``perturbflow train|infer`` print the block themselves. Set
``PERTURBFLOW_TRACEBACK=1`` (or ``--verbose`` for ``perturbflow train|infer``) for the
traceback.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from kedro.framework.hooks import hook_impl

from perturbflow.exceptions import InputError

TRACEBACK_ENV = "PERTURBFLOW_TRACEBACK"
WIDTH = 100


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def user_error(error: BaseException) -> tuple[str, BaseException] | None:
    """The error a user can fix inside ``error``'s chain, with its kind; ``None`` for a bug.

    Returns:
        ``(kind, exception)``: ``"bad input"`` (InputError, a Kedro parameter validation
        error, a catalog file that cannot be read) or ``"run stopped"`` (TrainingStopped).
    """
    from perturbflow.models.training.fit import TrainingStopped

    chain = list(_chain(error))
    for exc in chain:
        if isinstance(exc, InputError):
            return "bad input", exc
        if isinstance(exc, TrainingStopped):
            return "run stopped", exc
        if type(exc).__name__ in ("ParameterValidationError", "ValidationError"):  # pydantic
            return "bad input", exc
    datasets = [e for e in chain if type(e).__name__ == "DatasetError"]
    if datasets:  # the innermost one names the file, the outer ones the catalog entry
        return "bad input", datasets[-1]
    return None


def short_report(error: BaseException, *, node: str | None = None) -> str | None:
    """The short block for a user-fixable ``error``; ``None`` when it is a bug.

    Args:
        error: The exception that ended the run.
        node: The node that raised it, when known.

    Returns:
        A few lines: what (the message, wrapped), where (node), how to see the traceback.
    """
    found = user_error(error)
    if found is None:
        return None
    kind, exc = found
    lines = [f"perturbflow: {kind} ({type(exc).__name__})"]
    for paragraph in str(exc).strip().splitlines():
        wrapped = textwrap.wrap(
            paragraph,
            WIDTH,
            initial_indent="  ",
            subsequent_indent="    ",
            break_long_words=False,  # a path stays whole, to be copied
            break_on_hyphens=False,
        )
        lines += wrapped or [""]
    if node:
        lines.append(f"  in node {node!r}")
    if kind == "bad input":
        lines.append("Fix the file, column or parameter named above and rerun the same command.")
    lines.append(f"(The full traceback: rerun with {TRACEBACK_ENV}=1.)")
    return "\n".join(lines)


def verbose() -> bool:
    """Whether the user asked for full tracebacks (``PERTURBFLOW_TRACEBACK=1``)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes")


ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]


def short_excepthook(previous: ExceptHook, node: Callable[[], str | None]) -> ExceptHook:
    """A ``sys.excepthook`` printing :func:`short_report` for user errors, else ``previous``."""

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> Any:
        report = None if verbose() else short_report(error, node=node())
        if report is None:
            return previous(kind, error, tb)
        print(report, file=sys.stderr)
        return None

    hook.perturbflow_short = True  # type: ignore[attr-defined]
    return hook


class ErrorReportHooks:
    """Install :func:`short_excepthook` for ``kedro run``; remember the failing node."""

    def __init__(self) -> None:
        self.node: str | None = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """Wrap the excepthook Kedro's rich logging installed (once per process)."""
        if not getattr(sys.excepthook, "perturbflow_short", False):
            sys.excepthook = short_excepthook(sys.excepthook, lambda: self.node)

    @hook_impl
    def on_node_error(self, error: Exception, node: Any) -> None:
        """Remember which node raised (the block names it)."""
        self.node = getattr(node, "name", None)
