"""Training progress over the run's ``max_steps``: a tqdm line on a terminal, log lines elsewhere.

A sentence "epoch" is a few batches here and a run is bounded by ``max_steps``, so
Lightning's default bar (one bar per epoch, ``Epoch 4: 2/2``) never says how far the run is.
Both displays count the global step against ``max_steps`` and show the rate, the ETA, the
training ``loss`` and the last ``val/pearson_delta``
(:mod:`perturbflow.models.st_module` logs both with ``prog_bar=True``):

* :class:`StepProgressBar`, when the stream is a terminal: Lightning's tqdm bar, one line;
* :class:`LogProgress` otherwise (a log file, CI): a line through the ``perturbflow`` logger
  at the first step, every ``interval_s`` seconds, after each validation and at the end, e.g.
  ``training fewshot: step 120/400 (30%), 4.1 steps/s, ETA 68 s, loss 0.412,
  val pearson_delta 0.55``.

Only rank zero shows either (Lightning's ``ProgressBar.setup`` disables the other ranks).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from perturbflow.logs import is_terminal

logger = logging.getLogger(__name__)

LOSS = "loss"
VAL_SCORE = "val/pearson_delta"
#: Seconds between two progress lines in a log file.
DEFAULT_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Progress:
    """Where a run stands.

    Attributes:
        step: Optimiser steps done (the global step, resumed runs included).
        total: ``max_steps`` (``None`` when the run has no step bound).
        rate: Steps per second since the display started measuring (``None`` before).
        loss: The last training loss, if logged.
        val: The last validation pearson_delta, if logged.
    """

    step: int
    total: int | None
    rate: float | None = None
    loss: float | None = None
    val: float | None = None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate (``None`` without a rate or a bound)."""
        if not self.rate or self.total is None:
            return None
        return max(self.total - self.step, 0) / self.rate


def format_duration(seconds: float) -> str:
    """``68 s``, ``12 min``, ``2 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def format_progress(label: str, progress: Progress) -> str:
    """One log line: ``<label>: step 120/400 (30%), 4.1 steps/s, ETA 68 s, loss 0.412, ...``."""
    if progress.total:
        percent = 100 * progress.step // progress.total
        parts = [f"step {progress.step}/{progress.total} ({percent}%)"]
    else:
        parts = [f"step {progress.step}"]
    if progress.rate is not None:
        parts.append(f"{progress.rate:.3g} steps/s")
    if progress.eta_s is not None:
        parts.append(f"ETA {format_duration(progress.eta_s)}")
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4g}")
    if progress.val is not None:
        parts.append(f"val pearson_delta {progress.val:.3g}")
    return f"{label}: {', '.join(parts)}"


def _metric(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


def run_metrics(trainer: pl.Trainer) -> tuple[float | None, float | None]:
    """The last training loss and validation pearson_delta shown on progress bars."""
    metrics = trainer.progress_bar_metrics
    return _metric(metrics, LOSS), _metric(metrics, VAL_SCORE)


def max_steps(trainer: pl.Trainer) -> int | None:
    """The trainer's step bound, ``None`` when unbounded (``max_steps=-1``)."""
    return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar over the whole run: global step of ``max_steps``, not per epoch.

    Lightning's bar draws the rate, the ETA, the postfix and the terminal width; what it
    does not do, written here: one bar for the run (it resets one per epoch and its total
    is the epoch's batches), starting at the resumed step, and no second bar for the
    validation's few batches (the score lands in the postfix instead).

    Args:
        label: What the run is (``training fewshot``).
        stream: Where the bar is drawn (``sys.stderr`` by default, like tqdm).
        refresh_rate: Redraw every this many steps.
    """

    BAR_FORMAT = (
        "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
        "[{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
    )

    def __init__(self, label: str, stream: TextIO | None = None, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.label = label
        self.stream = stream

    def init_train_tqdm(self) -> Tqdm:
        """The run's bar, from the (resumed) global step to ``max_steps``."""
        return Tqdm(
            desc=self.label,
            total=max_steps(self.trainer),
            initial=self.trainer.global_step,
            unit=" steps",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=self.stream if self.stream is not None else sys.stderr,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        """Keep the run's bar across the sentence epochs (Lightning resets it here)."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
    ) -> None:
        """Move the bar to the global step."""
        bar = self.train_progress_bar
        if bar.disable or not self._should_update(trainer.global_step, bar.total or 0):
            return
        bar.n = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No validation bar: a few batches, whose score goes to the run's bar."""

    def on_validation_batch_start(self, *_: Any, **__: Any) -> None:  # noqa: D102
        pass

    def on_validation_batch_end(self, *_: Any, **__: Any) -> None:  # noqa: D102
        pass

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Show the new validation score."""
        self.reset_dataloader_idx_tracker()
        if self._train_progress_bar is not None and not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The loss and the last ``val pearson_delta`` (no ``v_num``)."""
        loss, val = run_metrics(trainer)
        items: dict[str, Any] = {}
        if loss is not None:
            items["loss"] = f"{loss:.4g}"
        if val is not None:
            items["val_pearson_delta"] = f"{val:.3g}"
        return items


class LogProgress(ProgressBar):
    """Progress lines through the ``perturbflow`` logger, for a stream that is not a terminal.

    A line at the first step, then at most every ``interval_s`` seconds, after each
    validation and at the end of training. The rate is measured from the end of the first
    step (start-up excluded), validations included, so the ETA is wall time.

    Args:
        label: What the run is (``training fewshot``).
        interval_s: Seconds between two lines (0: every step).
        clock: Seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        label: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.label = label
        self.interval_s = interval_s
        self.clock = clock
        self._enabled = True
        self._start: tuple[float, int] | None = None
        self._last_time = 0.0
        self._last_step: int | None = None

    def disable(self) -> None:
        """Silence this display (Lightning calls it on ranks other than zero)."""
        self._enabled = False

    def enable(self) -> None:
        """Show this display again."""
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restart the rate measure (a trainer may fit more than once)."""
        self._start, self._last_step = None, None

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        """A line at the first step and then every ``interval_s`` seconds."""
        now = self.clock()
        if self._start is None:
            self._start = (now, trainer.global_step)
            self._emit(trainer, now)
        elif now - self._last_time >= self.interval_s:
            self._emit(trainer, now)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A line with the new validation score."""
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._emit(trainer, self.clock())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The last line (unless the last step was just shown)."""
        if self._last_step != trainer.global_step:
            self._emit(trainer, self.clock())

    def progress(self, trainer: pl.Trainer, now: float) -> Progress:
        """Where the run stands at time ``now``."""
        rate = None
        if self._start is not None and now > self._start[0]:
            rate = (trainer.global_step - self._start[1]) / (now - self._start[0])
        loss, val = run_metrics(trainer)
        return Progress(trainer.global_step, max_steps(trainer), rate or None, loss, val)

    def _emit(self, trainer: pl.Trainer, now: float) -> None:
        self._last_time, self._last_step = now, trainer.global_step
        if self._enabled and trainer.is_global_zero:
            logger.info(format_progress(self.label, self.progress(trainer, now)))


def progress_display(
    label: str, *, interval_s: float = DEFAULT_INTERVAL_S, stream: TextIO | None = None
) -> ProgressBar:
    """The progress callback of a run: a tqdm line on a terminal, log lines otherwise.

    Args:
        label: What the run is (``training fewshot``).
        interval_s: Seconds between two log lines (not on a terminal).
        stream: The stream the bar would draw on (``sys.stderr`` by default).
    """
    stream = stream if stream is not None else sys.stderr
    if is_terminal(stream):
        return StepProgressBar(label, stream=stream)
    return LogProgress(label, interval_s=interval_s)


def run_label(run_dir: Path, settings: object) -> str:
    """``training fewshot`` from ``TrainingParams`` and ``runs/fewshot``."""
    kind = type(settings).__name__.removesuffix("Params").lower() or "run"
    return f"{kind} {Path(run_dir).name}"
