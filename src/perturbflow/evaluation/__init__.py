"""Baselines, cell-eval scoring and plots (no Kedro imports)."""

from perturbflow.baselines import (
    PredictedEffect,
    predict_context_mean,
    predict_control,
    predict_perturbation_mean,
    select_and_fit_linear,
)
from perturbflow.evaluation.benchmark import (
    BaselineRun,
    build_baseline_predictions,
    evaluate_predictions,
    split_names,
)
from perturbflow.evaluation.cells import predicted_adata, real_adata
from perturbflow.evaluation.plots import delta_scatter_figure, metric_comparison_figure
from perturbflow.evaluation.scoring import (
    add_normalised_scores,
    aggregate_metrics,
    score_predictions,
)
from perturbflow.evaluation.selection import (
    CHOSEN,
    add_chosen_predictor,
    choose_by_validation,
    validation_scores,
)
from perturbflow.evaluation.variability import std_ratio, variability_table

__all__ = [
    "CHOSEN",
    "BaselineRun",
    "PredictedEffect",
    "add_chosen_predictor",
    "add_normalised_scores",
    "aggregate_metrics",
    "build_baseline_predictions",
    "choose_by_validation",
    "delta_scatter_figure",
    "evaluate_predictions",
    "metric_comparison_figure",
    "predict_context_mean",
    "predict_control",
    "predict_perturbation_mean",
    "predicted_adata",
    "real_adata",
    "score_predictions",
    "select_and_fit_linear",
    "split_names",
    "std_ratio",
    "validation_scores",
    "variability_table",
]
