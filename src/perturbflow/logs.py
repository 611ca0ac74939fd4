"""Console logging: rich on a terminal, one plain line per record elsewhere; Lightning's once.

* :class:`ConsoleHandler` draws records with Kedro's ``RichHandler`` when its stream is a
  terminal (colours, rich tracebacks, as before) and as one plain
  ``%(asctime)s %(levelname)s %(name)s: %(message)s`` line otherwise: Rich formats for a
  terminal's width (80 columns when it cannot tell), so a log file got its messages wrapped
  at about 40 columns beside the time, level and path columns.
* :func:`use_plain_console` swaps the root logger's Kedro ``RichHandler`` for a
  :class:`ConsoleHandler` when it does not write to a terminal. Kedro 1.7 only lets
  ``conf/logging.yml`` name handler classes of ``logging``, ``kedro.logging`` and the
  modules of ``KEDRO_LOGGING_MODULE_ALLOWLIST``, so the shipped configuration keeps
  Kedro's handler and :class:`perturbflow.hooks.ConsoleLoggingHooks` swaps it when a Kedro
  context starts.
* :func:`route_lightning_logs`: ``import lightning`` adds a ``StreamHandler`` to the
  ``lightning`` logger and leaves it propagating, so with a handler on the root logger every
  Lightning line printed twice; its own handler is removed then.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ConsoleHandler(logging.StreamHandler):
    """Kedro's ``RichHandler`` on a terminal, one plain line per record otherwise.

    Usable in a logging configuration (``class: perturbflow.logs.ConsoleHandler``; under
    Kedro with ``KEDRO_LOGGING_MODULE_ALLOWLIST=perturbflow.logs``).

    Args:
        stream: Where records go (``sys.stdout`` by default, like Kedro's handler).
        **rich_kwargs: Arguments of ``kedro.logging.RichHandler`` on a terminal
            (``rich_tracebacks: true`` installs rich tracebacks); ignored otherwise.
    """

    def __init__(self, stream: TextIO | None = None, **rich_kwargs: Any) -> None:
        super().__init__(stream if stream is not None else sys.stdout)
        self.setFormatter(logging.Formatter(PLAIN_FORMAT))
        self.rich: logging.Handler | None = None
        if is_terminal(self.stream):
            from kedro.logging import RichHandler
            from rich.console import Console

            self.rich = RichHandler(console=Console(file=self.stream), **rich_kwargs)

    def emit(self, record: logging.LogRecord) -> None:
        """Draw ``record`` with rich on a terminal, else as one formatted line."""
        if self.rich is not None:
            self.rich.emit(record)
        else:
            super().emit(record)

    def close(self) -> None:
        """Close the rich handler too."""
        if self.rich is not None:
            self.rich.close()
        super().close()


def use_plain_console(logger: logging.Logger | None = None) -> int:
    """Swap the Kedro rich handlers of ``logger`` that write to no terminal for plain ones.

    A handler in a Jupyter notebook stays (rich draws the notebook's output itself).

    Args:
        logger: The logger whose handlers are checked (the root logger by default).

    Returns:
        How many handlers were swapped.
    """
    from kedro.logging import RichHandler

    logger = logger or logging.getLogger()
    swapped = 0
    for old in list(logger.handlers):
        if not isinstance(old, RichHandler):
            continue
        console = old.console
        if console.is_terminal or console.is_jupyter:
            continue
        new = ConsoleHandler(stream=console.file)
        new.setLevel(old.level)
        for log_filter in old.filters:
            new.addFilter(log_filter)
        logger.removeHandler(old)
        logger.addHandler(new)
        swapped += 1
    return swapped


def route_lightning_logs() -> bool:
    """Let Lightning's records print once, through the root logger's handlers.

    ``import lightning`` gives the ``lightning`` logger a ``StreamHandler`` of its own
    (``INFO: ...``) and leaves it propagating to the root logger. When the root logger has
    a handler (Kedro's logging, ``logging.basicConfig``), Lightning's is removed; without
    one it stays, so Lightning's lines still show.

    Returns:
        Whether Lightning's handler was removed.
    """
    lightning = sys.modules.get("lightning")
    own = getattr(lightning, "_console", None)
    target = logging.getLogger("lightning")
    if own is None or own not in target.handlers or not logging.getLogger().handlers:
        return False
    target.removeHandler(own)
    return True
