"""Hyper-parameter search of the finetuning with Optuna (no Kedro imports).

* :mod:`~perturbflow.tuning.params`: the typed ``tune`` params group.
* :mod:`~perturbflow.tuning.space`: search space over dotted fields of a frozen config.
* :mod:`~perturbflow.tuning.study`: RDB storage, seeded TPE sampler, pruner, resume.
* :mod:`~perturbflow.tuning.pruning`: the Lightning pruning callback (per optimiser step).
* :mod:`~perturbflow.tuning.objective`: a trial = a finetuning run, scored on validation.
* :mod:`~perturbflow.tuning.tables` / :mod:`~perturbflow.tuning.figures`: the outputs.
* :mod:`~perturbflow.tuning.sweep`: :func:`tune_finetuning`, what the ``tune`` node wraps.
"""

from perturbflow.tuning.params import (
    CategoricalDimension,
    CellEvalObjectiveParams,
    FloatDimension,
    HeartbeatParams,
    IntDimension,
    PrunerParams,
    SamplerParams,
    TuneParams,
)
from perturbflow.tuning.study import StudyStorage, count_finished, open_study, run_study
from perturbflow.tuning.sweep import TuneResult, check_tune, tune_finetuning

__all__ = [
    "StudyStorage",
    "CategoricalDimension",
    "CellEvalObjectiveParams",
    "FloatDimension",
    "HeartbeatParams",
    "IntDimension",
    "PrunerParams",
    "SamplerParams",
    "TuneParams",
    "TuneResult",
    "check_tune",
    "count_finished",
    "open_study",
    "run_study",
    "tune_finetuning",
]
