"""The Lightning trainer of training and finetuning runs: checkpoints, logger, precision.

One builder serves :func:`perturbflow.models.training.train.train_st` and
:func:`perturbflow.models.training.finetune.finetune_st`: periodic, ``last`` and ``best``
checkpoints (written atomically, :mod:`perturbflow.models.training.checkpoint_io`), a CSV or
TensorBoard logger,
mixed precision where the device supports it, an optional moving average of the weights and
a throughput meter.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, WeightAveraging
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch.optim.swa_utils import get_ema_avg_fn

from perturbflow.exceptions import InputError
from perturbflow.logs import route_lightning_logs
from perturbflow.models.runs.run_dir import CHECKPOINTS
from perturbflow.models.training.checkpoint_io import AtomicCheckpointIO
from perturbflow.models.training.fit import Resume, RunCSVLogger, StopCheckpoint
from perturbflow.models.training.progress import progress_display, run_label
from perturbflow.params import TrainerParams

# Two Lightning warnings that say nothing about a run, printed in every training log:
# - a sentence "epoch" is a few batches here, shorter than log_every_n_steps; Lightning
#   warns, but it logs on the global step, so metrics.csv still gets a row every
#   log_every_n_steps (checked in the training tests);
# - Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates (Lightning's own code).
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class ThroughputMeter(Callback):
    """Training throughput (perturbed cells per second, all DDP ranks), after a warm-up."""

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.cells = 0
        self.seconds = 0.0
        self._started: float | None = None
        self._seen = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self._seen += 1
        if self._started is not None and self._seen > self.warmup_steps:
            self.seconds += time.perf_counter() - self._started
            # every DDP rank trains on its own share: the run's throughput is world_size times
            self.cells += int(batch["pert_rows"].numel()) * trainer.world_size

    @property
    def cells_per_s(self) -> float | None:
        """Cells per second over the measured steps, or ``None`` before any."""
        return self.cells / self.seconds if self.seconds > 0 else None


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16 mixed precision on a GPU that supports it, else full precision."""
    if precision != "auto":
        return precision
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def check_ema_decay(decay: float | None) -> None:
    """Check ``training.ema_decay`` before any work starts.

    Raises:
        InputError: A decay outside ``(0, 1)`` (``None``, off, is fine).
    """
    if decay is not None and not 0.0 < decay < 1.0:
        raise InputError(f"training.ema_decay is {decay}; expected a number in (0, 1) or null.")


def ema_callback(decay: float) -> Callback:
    """Lightning's weight averaging as an exponential moving average of the weights.

    Validation, the checkpoints' ``state_dict`` (hence ``best`` and the saved weights) and
    the model at the end of training use the averaged weights; the raw weights travel in
    the checkpoint too, so a resumed run continues both.

    Raises:
        InputError: A decay outside ``(0, 1)``.
    """
    check_ema_decay(decay)
    return WeightAveraging(avg_fn=get_ema_avg_fn(decay))


def build_trainer(
    run: Path,
    settings: TrainerParams,
    *,
    has_val: bool,
    callbacks: Sequence[Callback] = (),
    resume: Resume | None = None,
) -> tuple[pl.Trainer, ModelCheckpoint | None, ThroughputMeter]:
    """The Lightning trainer of a training or finetuning run, with its checkpoints.

    Args:
        run: The run directory (checkpoints and logs go under it).
        settings: The trainer fields of ``TrainingParams`` or ``FinetuningParams``
            (an ``ema_decay`` attribute, training's, adds the moving average).
        has_val: Whether the split has validation perturbations (``best`` checkpoint).
        callbacks: Extra callbacks (e.g. an Optuna pruning callback).
        resume: The checkpoint the run resumes from (the CSV log keeps the rows before it).

    Returns:
        ``(trainer, best checkpoint callback or None, throughput meter)``.
    """
    best = _best_checkpoint(run) if has_val else None
    meter = ThroughputMeter()
    all_callbacks: list[Callback] = [
        _periodic_checkpoints(
            run,
            settings.ckpt_every_n_steps,
            settings.val_every_n_steps if has_val else None,
            settings.keep_step_checkpoints,
        ),
        *([best] if best else []),
        meter,
        StopCheckpoint(run / CHECKPOINTS),
        *callbacks,
    ]
    decay = getattr(settings, "ema_decay", None)
    if decay is not None:
        all_callbacks.append(ema_callback(decay))
    if settings.progress_bar:  # steps of max_steps, not Lightning's bar per sentence epoch
        all_callbacks.append(progress_display(run_label(run, settings)))
    route_lightning_logs()  # Lightning's own console handler printed each line twice
    log_every = min(10, settings.val_every_n_steps)
    run_logger = _run_logger(run, settings.logger, resume, log_every)
    trainer = pl.Trainer(
        max_steps=settings.max_steps,
        accelerator=settings.accelerator,
        devices=settings.devices,
        strategy=settings.strategy,
        num_nodes=settings.num_nodes,
        precision=resolve_precision(settings.precision, settings.accelerator),
        gradient_clip_val=settings.optimizer.gradient_clip_val or None,
        val_check_interval=settings.val_every_n_steps if has_val else None,
        check_val_every_n_epoch=None if has_val else 1,
        limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=0,
        callbacks=all_callbacks,
        logger=run_logger,
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=log_every,
        default_root_dir=str(run),
        plugins=[AtomicCheckpointIO()],
        # the sentence sampler shares each epoch between DDP ranks itself
        # (perturbflow.loading.sentence_sampler): Lightning's DistributedSampler cannot wrap it
        use_distributed_sampler=False,
    )
    return trainer, best, meter


class _StepCheckpoint(ModelCheckpoint):
    """``step=N.ckpt`` every N steps; at a step that validates, saved after its validation.

    Lightning saves step checkpoints at the end of the training batch, before that step's
    validation: a run killed during the validation resumed after it and never validated
    that step, so its row was missing from ``metrics.csv``. Deferring the save to the end
    of the validation (Lightning's own deferral, used for monitored checkpoints) makes a
    checkpoint mean "everything up to this step, its validation included".
    """

    def __init__(self, *args: Any, val_every: int | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._val_every = val_every

    def on_train_batch_end(  # noqa: D102
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        step = trainer.global_step
        due = self._every_n_train_steps > 0 and step % self._every_n_train_steps == 0
        if due and self._val_every and step % self._val_every == 0:
            self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)


def check_trainer_settings(settings: TrainerParams, group: str) -> None:
    """Fail before any work on step counts below 1 or a ``keep_step_checkpoints`` below 1.

    The checks the ``training`` and ``finetuning`` groups share (``None`` keeps every step
    checkpoint).

    Args:
        settings: The group's trainer fields.
        group: ``"training"`` or ``"finetuning"`` (the messages name the key).

    Raises:
        InputError: ``max_steps``, ``val_every_n_steps`` or ``ckpt_every_n_steps`` below 1,
            or ``keep_step_checkpoints`` 0 or negative.
    """
    if min(settings.max_steps, settings.val_every_n_steps, settings.ckpt_every_n_steps) < 1:
        raise InputError(
            f"{group}.max_steps, val_every_n_steps and ckpt_every_n_steps must be >= 1."
        )
    keep = settings.keep_step_checkpoints
    if keep is not None and keep < 1:
        raise InputError(
            f"{group}.keep_step_checkpoints is {keep}: keep at least 1 periodic checkpoint (2 or "
            "more where a full disk could truncate the newest), or null to keep every one."
        )


def _periodic_checkpoints(
    run: Path, every: int, val_every: int | None, keep: int | None
) -> ModelCheckpoint:
    """``step=N.ckpt`` every ``every`` steps (the newest ``keep``, or all) and ``last.ckpt``.

    Keeping the newest ``keep`` is Lightning's top-k on the step counter (``monitor="step"``,
    ``mode="max"``): the callback's state travels in the checkpoint, so a resumed run goes
    on pruning the files of the run it resumed.
    """
    top_k: dict[str, Any] = {"save_top_k": -1}
    if keep is not None:
        top_k = {"save_top_k": keep, "monitor": "step", "mode": "max"}
    return _StepCheckpoint(
        dirpath=run / CHECKPOINTS,
        filename="step={step}",
        auto_insert_metric_name=False,
        every_n_train_steps=every,
        save_last=True,
        val_every=val_every,
        **top_k,
    )


def _best_checkpoint(run: Path) -> ModelCheckpoint:
    """``best.ckpt``: the weights of the best validation pearson_delta so far."""
    return ModelCheckpoint(
        dirpath=run / CHECKPOINTS,
        filename="best",
        monitor="val/pearson_delta",
        mode="max",
        save_top_k=1,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
    )


def _run_logger(run: Path, kind: str, resume: Resume | None, every: int) -> Logger:
    """TensorBoard event files, or ``logs/metrics.csv`` continued on resume."""
    if kind == "tensorboard":
        return TensorBoardLogger(save_dir=str(run), name="logs", version="")
    step = resume.step if resume else None  # flushed as often as rows are logged
    return RunCSVLogger(str(run), resume_step=step, flush_every=every)
