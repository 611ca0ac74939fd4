"""Nodes of the ``evaluation`` pipeline: thin wrappers over :mod:`perturbflow.evaluation`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anndata as ad
import pandas as pd
import plotly.graph_objects as go

from perturbflow.datasets import H5adCells
from perturbflow.evaluation import (
    add_chosen_predictor,
    build_baseline_predictions,
    delta_scatter_figure,
    evaluate_predictions,
    metric_comparison_figure,
    variability_table,
)
from perturbflow.params import ColumnsParams, EvaluationParams, LoaderParams

logger = logging.getLogger(__name__)

Partitions = Mapping[str, ad.AnnData | Callable[[], ad.AnnData]]

TABLE_METRICS = (
    "pearson_delta",
    "discrimination_score_l1",
    "overlap_at_N",
    "precision_at_N",
    "mse",
    "mae",
)


def predict_baselines(
    preprocessed_adata: H5adCells,
    split_table: pd.DataFrame,
    hvg_genes: list[str],
    columns: ColumnsParams,
    evaluation: EvaluationParams,
    loader: LoaderParams,
) -> tuple[dict[str, ad.AnnData], dict[str, ad.AnnData], pd.DataFrame, dict, pd.DataFrame]:
    """Cell-level test predictions of every baseline, per named split.

    The expression (``obsm['X_hvg']``) is read by rows from the preprocessed file,
    preloaded within ``loader.memory_budget_mib``.

    Returns:
        Predictions keyed ``<split>/<predictor>``, the real held-out cells keyed by split,
        the prediction-source table, the linear baseline's rank selection and every
        baseline's pearson_delta on the validation perturbations.
    """
    return build_baseline_predictions(
        preprocessed_adata,
        split_table,
        hvg_genes,
        columns,
        evaluation,
        progress=logger.info,
        memory_budget_mib=loader.memory_budget_mib,
        preload=loader.preload,
        lazy=True,  # the partitioned datasets build and save one predictor at a time
    )


def gather_predictions(
    baseline_predictions: Partitions,
    model_predictions: Partitions,
    finetuned_predictions: Partitions,
    heldout_real: Partitions,
) -> dict[str, Partitions]:
    """Every prediction to score: the baselines, then the ST and finetuned models'.

    Model predictions (``07_model_output/{model,finetuned}_predictions/<split>/<name>.h5ad``,
    from the training and finetuning pipelines) count when present and of a split
    evaluated now; others are left over from earlier runs and ignored (with a warning).
    Partitions stay load functions: each is read when scored.

    Returns:
        ``<split>/<predictor>`` -> the prediction (or its load function).
    """
    models = {**model_predictions, **finetuned_predictions}
    kept = {k: v for k, v in models.items() if k.split("/")[0] in heldout_real}
    ignored = sorted(set(models) - set(kept))
    if ignored:
        logger.warning("Model predictions of splits not evaluated now are ignored: %s", ignored)
    return {**baseline_predictions, **kept}


def choose_perturbflow(
    all_predictions: Partitions,
    baseline_validation_scores: pd.DataFrame,
    model_validation_scores: Mapping[str, pd.DataFrame | Callable[[], pd.DataFrame]],
    finetuned_validation_scores: Mapping[str, pd.DataFrame | Callable[[], pd.DataFrame]],
    baseline_sources: pd.DataFrame,
) -> tuple[dict[str, Partitions], pd.DataFrame, pd.DataFrame]:
    """Add each split's ``perturbflow`` prediction: the candidate best on validation.

    Candidates are the split's baselines and its models (``<split>/st``, a finetuned
    ``<split>/st_lora``) with their validation scores (the training and finetuning
    pipelines write them beside their predictions); the chosen one's test prediction is
    scored again under the name ``perturbflow`` (:mod:`perturbflow.evaluation.selection`).
    No test cell is read to choose.

    Returns:
        Every prediction plus ``<split>/perturbflow``, the selection table
        (``perturbflow_selection.csv``) and the prediction sources with the
        ``perturbflow`` rows (``prediction_sources.csv``: ``<chosen>:<its source>``).
    """
    frames = [baseline_validation_scores]
    models = {**model_validation_scores, **finetuned_validation_scores}
    for key in sorted(models):
        if key in all_predictions:  # scores of a split evaluated now
            value = models[key]
            frames.append(value() if callable(value) else value)
    return add_chosen_predictor(all_predictions, frames, baseline_sources)


def score_predictions(
    predictions: Partitions,
    heldout_real: Partitions,
    columns: ColumnsParams,
    evaluation: EvaluationParams,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every prediction and each split's ceiling with cell-eval.

    Returns:
        ``metrics.csv`` (one row per split and predictor) and the per-perturbation table.
    """
    return evaluate_predictions(predictions, heldout_real, columns, evaluation)


def measure_variability(
    predictions: Partitions, heldout_real: Partitions, columns: ColumnsParams
) -> pd.DataFrame:
    """Per split and predictor, how variable predicted cells are against real ones.

    Returns:
        ``prediction_variability.csv``: the median over genes of std(pred)/std(real), per
        perturbation averaged (mean, min, max); the target is 0.5 to 2.
    """
    return variability_table(predictions, heldout_real, columns)


def format_metrics_table(metrics: pd.DataFrame, evaluation: EvaluationParams) -> str:
    """Render the headline metrics as a Markdown table and print it.

    Returns:
        The Markdown table (saved as ``08_reporting/metrics.md``).
    """
    score = f"score_vs_{evaluation.reference_predictor}"
    shown = ["split", "predictor", "n_perturbations"]
    shown += [m for m in (*TABLE_METRICS, score) if m in metrics.columns]
    table = metrics[shown].to_markdown(index=False, floatfmt=".3f")
    print(f"\nperturbflow metrics (cell-eval, profile {evaluation.profile}):\n{table}\n")
    return table + "\n"


def plot_metric_comparison(metrics: pd.DataFrame) -> go.Figure:
    """Predictors side by side per metric (kedro-viz shows it)."""
    return metric_comparison_figure(metrics)


def plot_predicted_vs_real(
    predictions: Partitions,
    heldout_real: Partitions,
    columns: ColumnsParams,
    evaluation: EvaluationParams,
) -> go.Figure:
    """Predicted vs real delta for a few test perturbations (kedro-viz shows it)."""
    return delta_scatter_figure(
        predictions,
        heldout_real,
        columns,
        n_perturbations=evaluation.plot_perturbations,
    )
