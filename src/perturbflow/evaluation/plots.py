"""Plotly figures of the evaluation, saved as kedro-viz-readable JSON by the catalog."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from perturbflow.evaluation.benchmark import materialise
from perturbflow.params import ColumnsParams

HEADLINE_METRICS = ("pearson_delta", "discrimination_score_l1", "overlap_at_N", "mse")


def metric_comparison_figure(
    metrics: pd.DataFrame, *, metrics_shown: tuple[str, ...] = HEADLINE_METRICS
) -> go.Figure:
    """Predictors side by side, one panel per metric, one bar group per split.

    Args:
        metrics: The aggregate table (``split``, ``predictor``, metric columns).
        metrics_shown: Which metrics get a panel (those absent from the table are skipped).

    Returns:
        A plotly figure.
    """
    shown = [m for m in metrics_shown if m in metrics.columns]
    fig = make_subplots(rows=1, cols=max(len(shown), 1), subplot_titles=shown)
    for predictor_i, (predictor, rows) in enumerate(metrics.groupby("predictor", sort=False)):
        for col, metric in enumerate(shown, start=1):
            fig.add_trace(
                go.Bar(
                    name=predictor,
                    x=rows["split"],
                    y=rows[metric],
                    legendgroup=predictor,
                    showlegend=col == 1,
                    marker_color=_COLOURS[predictor_i % len(_COLOURS)],
                ),
                row=1,
                col=col,
            )
    fig.update_layout(barmode="group", title="Predictors per split (cell-eval means)", height=420)
    return fig


_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#7f7f7f")


def _mean_delta(adata: ad.AnnData, columns: ColumnsParams, context: str, pert: str) -> np.ndarray:
    obs = adata.obs
    in_context = (obs["context"].astype(str) == context).to_numpy()
    ctrl = in_context & (obs[columns.pert_col].astype(str) == columns.control_label).to_numpy()
    cells = in_context & (obs[columns.pert_col].astype(str) == pert).to_numpy()
    X = adata.X
    return np.asarray(X[cells].mean(axis=0)).ravel() - np.asarray(X[ctrl].mean(axis=0)).ravel()


def delta_scatter_figure(
    predictions: Mapping[str, ad.AnnData | Callable[[], ad.AnnData]],
    reals: Mapping[str, ad.AnnData | Callable[[], ad.AnnData]],
    columns: ColumnsParams,
    *,
    n_perturbations: int,
) -> go.Figure:
    """Predicted vs real delta (per gene) for the first test perturbations of each split.

    Args:
        predictions: Cell-level predictions keyed ``"<split>/<predictor>"``.
        reals: Real held-out cells keyed by split.
        columns: Column names of the design.
        n_perturbations: Perturbations shown per split.

    Returns:
        A plotly figure with one panel per (split, perturbation) and one trace per predictor.
    """
    panels = []
    loaded_reals = {split: materialise(real) for split, real in sorted(reals.items())}
    for split, real in loaded_reals.items():
        obs = real.obs
        perturbed = obs[obs[columns.pert_col].astype(str) != columns.control_label]
        pairs = perturbed[["context", columns.pert_col]].astype(str).drop_duplicates()
        panels += [(split, c, p) for c, p in pairs.itertuples(index=False)][:n_perturbations]
    cols = min(len(panels), 4) or 1
    rows = max(1, -(-len(panels) // cols))
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=[f"{s}: {p} ({c})" for s, c, p in panels]
    )
    loaded_preds = {key: materialise(value) for key, value in predictions.items()}
    predictor_names = list(dict.fromkeys(k.split("/", 1)[1] for k in loaded_preds))
    for i, (split, context, pert) in enumerate(panels):
        real_delta = _mean_delta(loaded_reals[split], columns, context, pert)
        for j, name in enumerate(predictor_names):
            pred = loaded_preds.get(f"{split}/{name}")
            if pred is None:
                continue
            fig.add_trace(
                go.Scattergl(
                    x=real_delta,
                    y=_mean_delta(pred, columns, context, pert),
                    mode="markers",
                    marker={"size": 4, "color": _COLOURS[j % len(_COLOURS)], "opacity": 0.6},
                    name=name,
                    legendgroup=name,
                    showlegend=i == 0,
                ),
                row=i // cols + 1,
                col=i % cols + 1,
            )
    fig.update_xaxes(title_text="real delta")
    fig.update_yaxes(title_text="predicted delta")
    fig.update_layout(title="Predicted vs real mean delta per gene", height=320 * rows)
    return fig
