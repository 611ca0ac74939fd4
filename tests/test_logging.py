"""Console logging: conf/logging.yml applied, Lightning's lines once, plain lines in a file."""

from __future__ import annotations

import io
import logging
import logging.config
import re
import sys
import warnings
from pathlib import Path

import lightning
import pytest
import yaml
from kedro.logging import RichHandler

from perturbflow.hooks import ConsoleLoggingHooks
from perturbflow.logs import ConsoleHandler, route_lightning_logs, use_plain_console
from perturbflow.models.training.trainer import build_trainer
from tests.models.support import training_params

CONF = Path(__file__).resolve().parents[1] / "conf" / "logging.yml"
PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO perturbflow\.test: x{300}$")


class TTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def project_logging():
    """Apply conf/logging.yml as Kedro does; put every logger back afterwards."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    hooks = (sys.excepthook, sys.displayhook, warnings.showwarning)
    logging.config.dictConfig(yaml.safe_load(CONF.read_text()))
    yield
    # Kedro's RichHandler installs rich tracebacks and pretty printing, captures warnings
    logging.captureWarnings(False)
    sys.excepthook, sys.displayhook, warnings.showwarning = hooks
    for lg, level, handlers, propagate, disabled in saved:
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate, lg.disabled = propagate, disabled


def count_handled(monkeypatch, text: str) -> list[logging.Handler]:
    """Record which handlers emit a record whose message holds ``text`` (not pytest's)."""
    seen: list[logging.Handler] = []
    handle = logging.Handler.handle

    def counting(self, record):
        if text in record.getMessage() and not type(self).__module__.startswith("_pytest"):
            seen.append(self)
        return handle(self, record)

    monkeypatch.setattr(logging.Handler, "handle", counting)
    return seen


def project_handlers() -> list[type]:
    """The root logger's handler classes, less pytest's capture."""
    handlers = logging.getLogger().handlers
    return [type(h) for h in handlers if not type(h).__module__.startswith("_pytest")]


def lightning_imported_after_config() -> None:
    """Under ``kedro run`` Lightning is imported after the config: its handler is there.

    (Its subpackages' loggers add a handler of their own, and stop propagating, only when
    the root logger had none at import.)
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        sub = logging.getLogger(name)
        sub.handlers[:], sub.propagate = [], True
    target = logging.getLogger("lightning")
    if lightning._console not in target.handlers:
        target.addHandler(lightning._console)


def test_lightning_lines_print_once(project_logging, tmp_path, monkeypatch):
    lightning_imported_after_config()
    seen = count_handled(monkeypatch, "GPU available")
    build_trainer(tmp_path / "run", training_params(), has_val=True)
    assert len(seen) == 1
    assert isinstance(seen[0], RichHandler)  # the project's handler, not Lightning's own


def test_without_the_fix_lightning_lines_print_twice(project_logging, tmp_path, monkeypatch):
    lightning_imported_after_config()
    seen = count_handled(monkeypatch, "GPU available")
    monkeypatch.setattr("perturbflow.models.training.trainer.route_lightning_logs", lambda: None)
    build_trainer(tmp_path / "run", training_params(), has_val=True)
    assert len(seen) == 2  # what users saw: Lightning's handler and the root's


def test_lightning_keeps_its_handler_without_a_root_handler(project_logging, monkeypatch):
    lightning_imported_after_config()
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert route_lightning_logs() is False
    assert lightning._console in logging.getLogger("lightning").handlers


def test_console_handler_is_one_plain_line_off_a_terminal():
    stream = io.StringIO()
    handler = ConsoleHandler(stream=stream, rich_tracebacks=True)
    assert handler.rich is None
    record = logging.LogRecord("perturbflow.test", logging.INFO, __file__, 1, "x" * 300, (), None)
    handler.handle(record)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and PLAIN_LINE.match(lines[0])


def test_console_handler_is_rich_on_a_terminal(project_logging):
    stream = TTY()
    handler = ConsoleHandler(stream=stream)
    assert isinstance(handler.rich, RichHandler)
    handler.handle(logging.LogRecord("perturbflow.test", logging.INFO, __file__, 1, "hi", (), None))
    assert "hi" in stream.getvalue() and "INFO" in stream.getvalue()


def test_kedro_hook_makes_the_log_file_plain(project_logging, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)  # kedro run > file: rich's console is a file
    ConsoleLoggingHooks().after_context_created(context=None)
    assert project_handlers() == [ConsoleHandler]
    logging.getLogger("perturbflow.test").info("x" * 300)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and PLAIN_LINE.match(lines[0])


def test_rich_handler_stays_on_a_terminal(project_logging, monkeypatch):
    monkeypatch.setattr(sys, "stdout", TTY())
    assert use_plain_console() == 0
    assert project_handlers() == [RichHandler]
