"""The one fit loop of training and finetuning: reuse, resume or fit, then keep the best.

:func:`~perturbflow.models.training.train.train_st` and
:func:`~perturbflow.models.training.finetune.finetune_st` differ in what they build (a network from
scratch, or LoRA on a base run) and what they save (weights, or an adapter); the steps in
between are these, in this order:

1. :func:`start` seeds everything and sets the CPU threads;
2. :func:`reused_summary` returns a finished run of the same configuration as it is;
3. :func:`prepare_run_dir` picks the checkpoint to resume from, or moves a run of another
   configuration aside (nothing is deleted);
4. :func:`fit_run` builds the trainer, fits (stopping loudly, :func:`fit_or_stop`), loads the
   best validation checkpoint's weights, and returns what the run's ``run.json`` reports
   (:meth:`FitResult.summary`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from perturbflow.io_utils import load_tensors
from perturbflow.models.runs.run_dir import CHECKPOINTS, SUMMARY, read_json
from perturbflow.models.training.fit import Resume, fit_or_stop, resume_checkpoint
from perturbflow.models.training.trainer import build_trainer
from perturbflow.params import TrainerParams

logger = logging.getLogger(__name__)


def start(settings: TrainerParams) -> None:
    """Seed Python, numpy, torch and the loader workers; set the CPU threads."""
    if settings.cpu_threads:
        torch.set_num_threads(settings.cpu_threads)
    pl.seed_everything(settings.seed, workers=True, verbose=False)


def finished_summary(run: Path, weights: str) -> dict[str, Any] | None:
    """``run.json`` of the finished run in ``run`` (with its ``weights`` file), if any."""
    if not ((run / SUMMARY).is_file() and (run / weights).is_file()):
        return None
    old = read_json(run / SUMMARY)
    return old if old.get("status") == "finished" else None


def reused_summary(run: Path, digest: str, weights: str) -> dict[str, Any] | None:
    """``run.json`` of a finished run of configuration ``digest`` (with its ``weights`` file)."""
    old = finished_summary(run, weights)
    if old is not None and old.get("config_sha256") == digest:
        logger.info("%s: finished run with this configuration found, reused.", run)
        return old
    return None


def prepare_run_dir(run: Path, digest: str, resume: bool) -> Resume | None:
    """Return the checkpoint to resume from (or ``None``); move a different run aside.

    Every DDP rank calls this and must get the same answer (a rank that resumed while
    another started afresh would train a different step count and hang the collectives):
    only rank 0 moves a run aside, the others then see no checkpoint of this digest.
    """
    summary_path = run / SUMMARY
    if not run.exists() or not any(run.iterdir()):
        return None
    old = read_json(summary_path) if summary_path.is_file() else {}
    if old.get("config_sha256") == digest:
        return resume_checkpoint(run / CHECKPOINTS) if resume else None
    if rank_zero_only.rank != 0:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run.with_name(f"{run.name}.previous-{stamp}")
    logger.warning(
        "%s holds a run with another configuration: moved to %s (nothing is deleted).", run, aside
    )
    shutil.move(str(run), str(aside))
    return None


@dataclass(frozen=True)
class FitResult:
    """What a fit did (the fields every ``run.json`` shares).

    Attributes:
        steps: Optimiser steps done (``max_steps``).
        wall_s: Seconds in ``trainer.fit``.
        cells_per_s: Training throughput after warm-up (all ranks), if measured.
        best_score: Best validation pearson_delta, ``None`` without validation.
        weights: ``"last"`` or ``"best (<checkpoint>)"``: what the module now holds.
        precision: The precision the trainer resolved (``auto`` -> bf16 / 32).
        resume: The checkpoint the fit resumed from, if any.
    """

    steps: int
    wall_s: float
    cells_per_s: float | None
    best_score: float | None
    weights: str
    precision: str
    resume: Resume | None

    def summary(self, digest: str, split_name: str) -> dict[str, Any]:
        """The shared head of ``run.json`` (status, identity, steps, timings, weights)."""
        return {
            "status": "finished",
            "config_sha256": digest,
            "split": split_name,
            "steps": self.steps,
            "resumed_from": str(self.resume.path) if self.resume else None,
            "fit_wall_seconds": round(self.wall_s, 2),
            "train_cells_per_s": round(self.cells_per_s, 1) if self.cells_per_s else None,
            "best_val_pearson_delta": self.best_score,
            "weights": self.weights,
            "precision": self.precision,
        }


def fit_run(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    *,
    run: Path,
    settings: TrainerParams,
    resume: Resume | None,
    has_val: bool,
    callbacks: Sequence[Callback],
    what: str,
    describe: str,
) -> FitResult:
    """Fit ``module`` to ``max_steps`` and leave it holding the weights to keep.

    Args:
        module: The Lightning module (its network is what is saved afterwards).
        datamodule: The cell sentences.
        run: The run directory (checkpoints and logs go under it).
        settings: The trainer fields of the training or finetuning params.
        resume: Where to resume from (:func:`prepare_run_dir`).
        has_val: Whether the split has validation perturbations (``best`` checkpoint).
        callbacks: Extra Lightning callbacks.
        what: ``"Training"`` or ``"Finetuning"`` (messages).
        describe: What is fitted, for the start line of the log.

    Returns:
        The fit's result; the module holds the best validation checkpoint's weights when
        the split has validation perturbations, else the last.

    Raises:
        TrainingStopped: SIGTERM, Ctrl-C or an early stop before ``max_steps``.
    """
    trainer, best, meter = build_trainer(
        run, settings, has_val=has_val, callbacks=callbacks, resume=resume
    )
    precision = str(trainer.precision)
    logger.info(
        "%s %s: %d steps, precision %s%s.",
        what,
        describe,
        settings.max_steps,
        precision,
        f", resuming from {resume.path}" if resume else "",
    )
    started = time.perf_counter()
    fit_or_stop(
        trainer, module, datamodule, resume=resume, run=run, max_steps=settings.max_steps, what=what
    )
    wall = time.perf_counter() - started
    weights, best_score = "last", None
    if best is not None and best.best_model_path:
        state = load_tensors(
            best.best_model_path, what="the best checkpoint", fix="rerun to fit again"
        )
        module.load_state_dict(state["state_dict"], strict=False)
        weights = f"best ({Path(best.best_model_path).name})"
        best_score = float(best.best_model_score) if best.best_model_score is not None else None
    return FitResult(
        steps=int(trainer.global_step),
        wall_s=wall,
        cells_per_s=meter.cells_per_s,
        best_score=best_score,
        weights=weights,
        precision=precision,
        resume=resume,
    )
