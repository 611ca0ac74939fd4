"""What training and finetuning share around ``trainer.fit``: resume, stop, keep the log.

* :func:`resume_checkpoint` picks the checkpoint a rerun resumes from: ``last.ckpt`` when it
  reads, else the newest intact ``step=N.ckpt`` (a checkpoint truncated by a full disk or a
  copy killed halfway must not end a run that has intact ones);
* :class:`RunCSVLogger` keeps ``logs/metrics.csv`` across resumes (Lightning's CSV logger
  deletes the file whenever its folder is not empty): the rows of the steps before the
  resumed one are kept, those the resumed run will train again are dropped;
* :class:`StopCheckpoint` saves ``last.ckpt`` when the run is stopped (SIGTERM from a
  scheduler, Ctrl-C), and :func:`fit_or_stop` turns Lightning's ``SIGTERMException`` (a
  ``SystemExit`` with code 0, so a stopped ``kedro run`` used to exit 0) into
  :class:`TrainingStopped`, which names the checkpoint to resume from.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path, load_tensors
from perturbflow.models.runs.run_dir import CHECKPOINTS

logger = logging.getLogger(__name__)

LAST = "last.ckpt"
_PERIODIC = re.compile(r"^step=(\d+)\.ckpt$")


class TrainingStopped(RuntimeError):
    """A training or finetuning stopped before ``max_steps`` (rerun the same command to resume)."""


@dataclass(frozen=True)
class Resume:
    """The checkpoint a rerun resumes from.

    Attributes:
        path: The checkpoint file.
        step: Its global step (the optimizer steps already done).
    """

    path: Path
    step: int


def _global_step(path: Path) -> int:
    """The global step a checkpoint holds; :class:`InputError` when it cannot be read."""
    state = load_tensors(
        path, what="a Lightning checkpoint", fix="the run resumes from an intact one if any"
    )
    if not isinstance(state, dict) or "global_step" not in state:
        raise InputError(f"{path}: not a Lightning checkpoint (no global_step).")
    return int(state["global_step"])


def resume_checkpoint(ckpt_dir: Path) -> Resume | None:
    """The newest readable checkpoint of a run: ``last.ckpt``, else the newest ``step=N``.

    Args:
        ckpt_dir: The run's ``checkpoints/`` folder.

    Returns:
        Where to resume, or ``None`` when the folder holds no checkpoint.

    Raises:
        InputError: Checkpoints exist but none can be read (the message lists them and
            says how to start afresh without losing them).
    """
    periodic = sorted(
        (p for p in ckpt_dir.glob("step=*.ckpt") if _PERIODIC.match(p.name)),
        key=lambda p: int(_PERIODIC.match(p.name).group(1)),
        reverse=True,
    )
    candidates = [p for p in [ckpt_dir / LAST, *periodic] if p.is_file()]
    broken: list[str] = []
    for path in candidates:
        try:
            resume = Resume(path, _global_step(path))
        except InputError as err:
            broken.append(str(path))
            logger.warning("%s", err)
            continue
        if broken:
            logger.warning(
                "Resuming from %s (step %d) instead of the unreadable %s.",
                path,
                resume.step,
                ", ".join(broken),
            )
        return resume
    if broken:
        raise InputError(
            f"No checkpoint of {ckpt_dir.parent} can be read ({', '.join(broken)} are truncated "
            f"or corrupt), so the run cannot resume. To start it afresh, move "
            f"{ckpt_dir.parent} aside (nothing is then lost) and rerun, or set "
            "resume=false (training.resume / finetuning.resume) to train over it."
        )
    return None


class _KeptRowsWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps the rows of the steps before ``resume_step``."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self._resume_step is None or not path.is_file():
            super()._check_log_dir_exists()  # a fresh run: Lightning's own behaviour
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if _row_step(r) < self._resume_step]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = header
        logger.info("%s: kept %d rows of the steps before %d.", path, len(rows), self._resume_step)


def _row_step(row: dict[str, str]) -> int:
    try:
        return int(float(row.get("step") or 0))
    except ValueError:
        return 0


class RunCSVLogger(CSVLogger):
    """``logs/metrics.csv`` of a run, continued (not wiped) when the run resumes.

    Args:
        save_dir: The run directory.
        resume_step: The global step the run resumes from (``None``: a fresh run).
        flush_every: Write buffered rows every this many steps.
    """

    def __init__(self, save_dir: str, *, resume_step: int | None, flush_every: int) -> None:
        super().__init__(
            save_dir=save_dir, name="logs", version="", flush_logs_every_n_steps=flush_every
        )
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # noqa: D102
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptRowsWriter(self.log_dir, self._resume_step)
        return self._experiment


class StopCheckpoint(Callback):
    """Save ``last.ckpt`` when a run is stopped by SIGTERM or Ctrl-C, and flush the log.

    Other exceptions save nothing: their state may be the cause (a NaN, a bad batch).
    """

    def __init__(self, ckpt_dir: Path) -> None:
        self.ckpt_dir = ckpt_dir

    def on_exception(  # noqa: D102
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt):
            return
        if trainer.global_step > 0:
            trainer.save_checkpoint(self.ckpt_dir / LAST, weights_only=False)
        for log in trainer.loggers:
            log.save()


def fit_or_stop(
    trainer: pl.Trainer,
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    *,
    resume: Resume | None,
    run: Path,
    max_steps: int,
    what: str,
) -> None:
    """``trainer.fit`` that fails loudly when the run stops before ``max_steps``.

    Args:
        trainer: Built by :func:`perturbflow.models.training.trainer.build_trainer`.
        module: The Lightning module.
        datamodule: The data.
        resume: Where to resume from (``None``: from scratch).
        run: The run directory (for the message).
        max_steps: The steps the run must reach.
        what: ``"Training"`` or ``"Finetuning"`` (for the message).

    Raises:
        TrainingStopped: SIGTERM, Ctrl-C or an early stop: the message says at which step
            and which checkpoint a rerun of the same command resumes from.
    """
    ckpt = resume.path if resume else None
    cause = ""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    except (SIGTERMException, KeyboardInterrupt, SystemExit) as err:
        # Lightning exits on Ctrl-C (sys.exit(1)) and raises SIGTERMException (exit code 0)
        cause = "SIGTERM" if isinstance(err, SIGTERMException) else "an interrupt"
    if cause or trainer.interrupted or trainer.global_step < max_steps:
        last = run / CHECKPOINTS / LAST
        where = (
            f"rerun the same command to resume from {last}"
            if last.is_file()
            else ("no checkpoint was written yet: a rerun starts afresh")
        )
        raise TrainingStopped(
            f"{what} of {run} stopped{' by ' + cause if cause else ''} at step "
            f"{trainer.global_step} of {max_steps}; {where}."
        )
