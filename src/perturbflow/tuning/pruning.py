"""Pruning from inside a Lightning ``Trainer``: optuna-integration's callback, per step.

:class:`optuna_integration.PyTorchLightningPruningCallback` reports the monitored metric
at ``trainer.current_epoch``. Finetuning validates every ``val_every_n_steps`` optimiser
steps, several times per epoch or once every few epochs depending on the data: two
validations of one epoch would share a step (Optuna keeps the first and ignores the
second), and the pruner's warm-up and interval would be counted in epochs. This subclass
reports at ``trainer.global_step`` instead; everything else (DDP broadcast and
``check_pruned``) is the parent's.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import optuna
from optuna_integration import PyTorchLightningPruningCallback

MONITOR = "val/pearson_delta"


class StepPruningCallback(PyTorchLightningPruningCallback):
    """Report ``monitor`` to the trial after each validation, keyed by the optimiser step.

    Args:
        trial: The running trial.
        monitor: The logged metric the pruner reads (``val/pearson_delta``).
    """

    def __init__(self, trial: optuna.Trial, monitor: str = MONITOR) -> None:
        super().__init__(trial, monitor)
        self.reported: dict[int, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report the metric at the current step; stop the trial when the pruner says so."""
        if trainer.sanity_checking or self.is_ddp_backend:
            # DDP: the parent's per-process bookkeeping (reported per epoch there)
            super().on_validation_end(trainer, pl_module)
            return
        current = trainer.callback_metrics.get(self.monitor)
        if current is None:
            return  # no validation perturbation logged it (checked before the sweep)
        value = float(current.item())
        if not math.isfinite(value):
            return  # a NaN score (e.g. a constant prediction) carries no ranking
        step = int(trainer.global_step)
        self._trial.report(value, step=step)
        self.reported[step] = value
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"Trial pruned at step {step} ({self.monitor}={value:.4f}).")
