"""The objective of a trial: finetune a base ST run with the trial's values, score it.

One trial = :func:`perturbflow.models.training.finetune.finetune_st` on the split's training cells,
from the base run, with the base finetuning config changed at the paths of ``tune.space``
(LoRA rank and alpha, the loss weights, the learning rate), into its own run directory
``<tune_storage folder>/<study_name>/trial-<number>``. Every trial uses the base config's seed, so
two trials differ only by the values searched.

Objectives (``tune.objective``), both computed on the split's **validation** perturbations
(never its test perturbations, which stay for the final report):

* ``pearson_delta``: the finetuning run's best validation pearson_delta, as logged by the
  Lightning module during training (``val/pearson_delta``, on sentence means).
* ``cell_eval``: the finetuned model predicts every validation perturbation from its
  context's control cells (:func:`perturbflow.models.inference.predict.predict_cells`, as many
  cells as the real ones), cell-eval scores them context by context
  (:func:`perturbflow.evaluation.scoring.score_predictions`), and the objective is
  ``sum_m w_m * mean_p(m) / sum_m |w_m|``: the weighted mean over the metrics ``m`` of
  ``tune.cell_eval.weights`` of their mean over the validation perturbations ``p``. The
  default weights 0.5 pearson_delta + 0.5 discrimination_score_l1 reward getting the
  direction of the effects right *and* telling the perturbations apart (pearson_delta
  alone is matched by the perturbation-mean baseline, which does not discriminate).

Pruning reads the validation pearson_delta after every validation of the training (for
both objectives: intermediate values of all trials are then comparable).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from perturbflow.exceptions import InputError
from perturbflow.params import ColumnsParams, LoaderParams
from perturbflow.tuning.params import CellEvalObjectiveParams, TuneParams
from perturbflow.tuning.space import apply, suggest
from perturbflow.tuning.study import StudyStorage

if TYPE_CHECKING:  # the evaluation and model stack (torch, cell-eval) loads on first use
    from perturbflow.models.runs.run_dir import TrainedRun
    from perturbflow.models.training.finetune import FinetuningParams
    from perturbflow.splits.data import SplitCells
    from perturbflow.splits.split_data import SplitData

logger = logging.getLogger(__name__)


def validation_keys(data: SplitCells) -> dict[tuple[str, str], int]:
    """Every validation (context, perturbation) and its number of real cells."""
    return data.heldout_keys("val")


def check_cell_eval_weights(params: CellEvalObjectiveParams) -> None:
    """Fail before the sweep on weights that name no cell-eval metric or sum to zero.

    Raises:
        InputError: Naming the unknown metrics and the known ones.
    """
    from cell_eval import metrics_registry  # local: cell-eval is slow to import

    known = set(metrics_registry.list_metrics())
    unknown = sorted(set(params.weights) - known)
    if unknown:
        raise InputError(
            f"tune.cell_eval.weights names {unknown}, which are not cell-eval metrics "
            f"(known: {sorted(known)})."
        )
    if not params.weights or sum(abs(w) for w in params.weights.values()) == 0:
        raise InputError("tune.cell_eval.weights must give a non-zero weight to a metric.")


def combine(means: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """``sum_m w_m * means[m] / sum_m |w_m|`` (NaN when a weighted metric is NaN)."""
    total = sum(abs(w) for w in weights.values())
    return float(sum(w * means[m] for m, w in weights.items()) / total)


def cell_eval_score(
    run: Any,
    data: SplitCells,
    columns: ColumnsParams,
    params: CellEvalObjectiveParams,
    *,
    seed: int,
) -> tuple[float, dict[str, float]]:
    """The ``cell_eval`` objective of a trained run on the validation perturbations.

    Args:
        run: A loaded run (:class:`perturbflow.models.runs.run_dir.TrainedRun`).
        data: The split's data (validation cells and their contexts' controls).
        columns: Column names of the design.
        params: Metrics, weights, profile and threads.
        seed: Seed of the control-cell sampling.

    Returns:
        The combined score and the mean of each weighted metric.

    Raises:
        InputError: The split has no validation perturbation, or the profile does not
            compute a weighted metric.
    """
    from perturbflow.evaluation.cells import real_adata
    from perturbflow.evaluation.scoring import score_predictions
    from perturbflow.models.inference.predict import predict_cells
    from perturbflow.predictions import assemble_predictions

    keys = validation_keys(data)
    if not keys:
        raise InputError(f"Split {data.split_name!r} has no validation perturbation to score.")
    # the network's own predictions: with prior_scope informed or out_of_context the
    # validation keys of a new context would all sit at the prior, the same for every trial
    result = predict_cells(run, data, keys, seed=seed, allow_unknown=True, network_only=True)
    pred = assemble_predictions(data, result.cells, columns)
    real = real_adata(data, "val", columns)
    table = score_predictions(
        real, pred, columns, profile=params.profile, num_threads=params.num_threads, seed=seed
    )
    missing = [m for m in params.weights if m not in table.columns]
    if missing:
        raise InputError(
            f"cell-eval's {params.profile!r} profile does not compute {missing} "
            "(tune.cell_eval.weights): choose another profile (full) or other metrics."
        )
    means = {m: float(np.nanmean(table[m].to_numpy(dtype=float))) for m in params.weights}
    return combine(means, params.weights), means


def run_number(trial: optuna.Trial) -> int:
    """The trial whose run directory this trial uses: itself, or the dead trial it retries.

    A trial enqueued again after its process died (``RetryHeartbeatStaleTrialCallback``)
    has the same parameters, hence the same finetuning configuration: it reuses the dead
    trial's run directory, and ``finetune_st`` resumes from its ``checkpoints/last.ckpt``.
    """
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    history = frozen.system_attrs.get("retry_history") or []
    return int(history[0]) if history else trial.number


class FinetuningObjective:
    """``objective(trial) -> float`` for :meth:`optuna.Study.optimize`.

    Args:
        split: The split's data (:class:`perturbflow.splits.split_data.SplitData`).
        columns: Column names of the design.
        loader: Loader params of the finetuning.
        finetuning: The base finetuning config
            (:class:`perturbflow.models.training.finetune.FinetuningParams`, ``split``
            already the sweep's).
        base: The trained run every trial finetunes.
        storage: Where the trials' runs go.
        tune: The tune params (space, objective, pruner).
    """

    def __init__(
        self,
        split: SplitData,
        *,
        columns: ColumnsParams,
        loader: LoaderParams,
        finetuning: FinetuningParams,
        base: TrainedRun,
        storage: StudyStorage,
        tune: TuneParams,
    ) -> None:
        self.split = split
        self.base = base
        self.storage = storage
        self.columns = columns
        self.loader = loader
        self.finetuning = finetuning
        self.tune = tune

    def config(self, values: Mapping[str, Any]) -> Any:
        """The finetuning config of a trial with these values."""
        return apply(self.finetuning, values)

    def __call__(self, trial: optuna.Trial) -> float:
        """Finetune with the trial's values and return its objective value.

        Raises:
            optuna.TrialPruned: The pruner stopped the trial.
        """
        from perturbflow.models.training.finetune import finetune_st
        from perturbflow.tuning.pruning import StepPruningCallback

        values = suggest(trial, self.tune.space)
        run_dir = self.storage.trial_dir(self.tune.study_name, run_number(trial))
        config = self.config(values)
        trial.set_user_attr("run_dir", str(run_dir))
        pruning = StepPruningCallback(trial) if self.tune.pruner.kind != "none" else None
        logger.info("Trial %d: %s -> %s", trial.number, values, run_dir)
        try:
            summary = finetune_st(
                self.split,
                self.base,
                columns=self.columns,
                loader=self.loader,
                finetuning=config,
                run_dir=run_dir,
                callbacks=[pruning] if pruning is not None else [],
            )
            if pruning is not None:
                pruning.check_pruned()  # DDP: the pruning decision of rank zero
        except optuna.TrialPruned:
            self._drop_checkpoints(run_dir)
            raise
        best = summary.get("best_val_pearson_delta")
        trial.set_user_attr("best_val_pearson_delta", best)
        trial.set_user_attr("steps", summary.get("steps"))
        trial.set_user_attr("n_trainable_parameters", summary.get("n_trainable_parameters"))
        if self.tune.objective == "pearson_delta":
            value = float("nan") if best is None else float(best)
        else:
            value = self._cell_eval(trial, run_dir)
        self._drop_checkpoints(run_dir)
        if not math.isfinite(value):
            logger.warning("Trial %d: objective is %s (the trial fails).", trial.number, value)
        return value

    def _drop_checkpoints(self, run_dir: Path) -> None:
        from perturbflow.models.runs.run_dir import CHECKPOINTS

        if not self.tune.keep_checkpoints and (run_dir / CHECKPOINTS).is_dir():
            # the finished trial's adapter.pt holds its weights; checkpoints only resume
            shutil.rmtree(run_dir / CHECKPOINTS)

    def _cell_eval(self, trial: optuna.Trial, run_dir: Path) -> float:
        from perturbflow.models.runs.adapter import load_finetuned

        run = load_finetuned(run_dir)
        logger.info(
            "Trial %d: predicting and scoring the validation cells with cell-eval...", trial.number
        )
        value, means = cell_eval_score(
            run, self.split.data, self.columns, self.tune.cell_eval, seed=self.tune.seed
        )
        for metric, mean in means.items():
            trial.set_user_attr(f"val_{metric}", mean)
        return value
