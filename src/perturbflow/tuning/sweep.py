"""``tune``: the whole sweep behind the Kedro ``tune`` node, usable from a notebook.

:func:`check_tune` validates everything before the first trial (space against the base
finetuning config, objective and direction, validation perturbations of the split);
:func:`tune_finetuning` opens (or resumes) the study, runs the missing trials and returns
the study with its outputs: the best trial's record, the trials table and the figures.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go

from perturbflow.exceptions import InputError
from perturbflow.params import ColumnsParams
from perturbflow.tuning.figures import study_figures
from perturbflow.tuning.objective import (
    FinetuningObjective,
    check_cell_eval_weights,
    validation_keys,
)
from perturbflow.tuning.params import TuneParams
from perturbflow.tuning.space import check_space
from perturbflow.tuning.study import StudyStorage, open_study, run_study
from perturbflow.tuning.tables import best_params, trials_table

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneResult:
    """What a sweep leaves behind.

    Attributes:
        study: The study (its storage holds every trial).
        best: The best trial's record (``best_params.json``).
        trials: One row per trial.
        figures: ``history``, ``importances`` and ``parallel`` plotly figures.
        ran: Trials this call ran (0 when the study was already complete).
    """

    study: optuna.Study
    best: dict[str, Any]
    trials: pd.DataFrame
    figures: dict[str, go.Figure]
    ran: int


def base_config(finetuning: Any, tune: TuneParams) -> Any:
    """The finetuning config every trial starts from (``tune.split``/``base`` when set)."""
    changes = {}
    if tune.base is not None:
        changes["base"] = tune.base
    if tune.split is not None:
        changes["split"] = tune.split
    return dataclasses.replace(finetuning, **changes) if changes else finetuning


def check_tune(split: Any, finetuning: Any, tune: TuneParams) -> None:
    """Fail before the first trial on anything the sweep would fail on later.

    Raises:
        InputError: A bad search space, objective, direction or pruner combination, a
            split without validation perturbations, or another split than ``tune.split``.
    """
    if split.split_name != finetuning.split:
        raise InputError(
            f"The split data is of split {split.split_name!r}, but the sweep tunes "
            f"{finetuning.split!r} (tune.split, else finetuning.split)."
        )
    check_space(finetuning, tune.space)
    if tune.objective == "pearson_delta" and tune.direction != "maximize":
        raise InputError(
            "tune.objective pearson_delta is maximised: set tune.direction to maximize."
        )
    if tune.pruner.kind != "none" and tune.direction != "maximize":
        raise InputError(
            "Pruning compares the trials' validation pearson_delta (higher is better), but "
            "tune.direction is minimize: set tune.pruner.kind to none or maximise."
        )
    if tune.objective == "cell_eval":
        check_cell_eval_weights(tune.cell_eval)
    if not validation_keys(split.data):
        raise InputError(
            f"Split {finetuning.split!r} has no validation perturbation: a trial is scored on "
            "them. Give the split val perturbations (parameters_splits.yml) or tune another."
        )


def tune_finetuning(
    split: Any,
    base_run: Any,
    storage: StudyStorage,
    *,
    columns: ColumnsParams,
    loader: Any,
    finetuning: Any,
    tune: TuneParams,
) -> TuneResult:
    """Run (or resume) the Optuna sweep over the finetuning hyper-parameters.

    Args:
        split: The data of ``tune.split`` (:class:`perturbflow.splits.split_data.SplitData`).
        base_run: The trained run every trial finetunes
            (:class:`~perturbflow.models.runs.run_dir.TrainedRun`).
        storage: Where the study and the trials' runs live.
        columns: Column names of the design.
        loader: Loader params of the finetuning.
        finetuning: The base finetuning config (``FinetuningParams``); each trial changes
            the fields of ``tune.space``.
        tune: Study, objective, space, pruning and budget.

    Returns:
        The study and its outputs.
    """
    base = base_config(finetuning, tune)
    check_tune(split, base, tune)
    identity = {
        "objective": tune.objective
        + (f":{sorted(tune.cell_eval.weights.items())}" if tune.objective == "cell_eval" else ""),
        "split": base.split,
        "init_from": str(base_run.path),
    }
    study = open_study(tune, storage, identity=identity)
    objective = FinetuningObjective(
        split,
        columns=columns,
        loader=loader,
        finetuning=base,
        base=base_run,
        storage=storage,
        tune=tune,
    )
    ran = run_study(study, objective, n_trials=tune.n_trials, timeout=tune.timeout)
    record = best_params(
        study, extra={"storage": storage.study_url(tune.study_name), "base_run": str(base_run.path)}
    )
    if record["best_trial"] is not None:
        record["finetuning"] = dataclasses.asdict(objective.config(record["params"]))
    logger.info(
        "Study %s: %d finished trials (%d run now), best %s = %s (trial %s).",
        study.study_name,
        record["n_finished"],
        ran,
        tune.objective,
        record["value"],
        record["best_trial"],
    )
    return TuneResult(
        study=study,
        best=record,
        trials=trials_table(study),
        figures=study_figures(study, seed=tune.seed),
        ran=ran,
    )
