"""The project's own baselines: effects predicted from training cells alone (no Kedro, no torch).

``simple``: ``control``, ``perturbation_mean``, ``context_mean``; ``linear``: the linear
model of Ahlmann-Eltze et al. These sit below both :mod:`perturbflow.evaluation` (which
scores them) and :mod:`perturbflow.models` (whose response prior starts from them).
"""

from perturbflow.baselines.linear import (
    LinearModel,
    fit_linear,
    pearson,
    predict_linear_with,
    real_deltas,
    select_and_fit_linear,
)
from perturbflow.baselines.simple import (
    FALLBACK,
    EffectPredictor,
    Key,
    PredictedEffect,
    predict_context_mean,
    predict_control,
    predict_perturbation_mean,
)

__all__ = [
    "FALLBACK",
    "EffectPredictor",
    "Key",
    "LinearModel",
    "PredictedEffect",
    "fit_linear",
    "pearson",
    "predict_context_mean",
    "predict_control",
    "predict_linear_with",
    "predict_perturbation_mean",
    "real_deltas",
    "select_and_fit_linear",
]
