"""Scoring predictions with cell-eval 0.8.2 (Python API), context by context.

cell-eval scores one context at a time (its CLI splits by ``--celltype-col``); this module
runs it per context, keeps the per-perturbation rows, and aggregates them into the
``(split, predictor)`` table of ``metrics.csv``. The ``ceiling`` predictor is cell-eval's
own data ceiling: each held-out perturbation's real cells are split into two disjoint
halves scored against each other, and the bounded reliability metrics are mapped back to
full depth with the Spearman-Brown correction. Error metrics (mse, mae) have no such
correction; for them the ceiling row holds the raw half-split value, a noise floor at
half depth (roughly twice the full-depth one).
"""

from __future__ import annotations

import logging
import tempfile
import time

import anndata as ad
import numpy as np
import pandas as pd
import polars as pl
from cell_eval import MetricsEvaluator, metrics_registry, score_agg_metrics
from cell_eval._evaluator import SB_METRICS  # the metrics cell-eval itself SB-corrects

from perturbflow.params import ColumnsParams

logger = logging.getLogger(__name__)

CEILING = "ceiling"
ID_COLUMNS = ("split", "predictor", "context", "perturbation")


def _contexts(adata: ad.AnnData) -> list[str]:
    return sorted(adata.obs["context"].astype(str).unique())


def _subset(adata: ad.AnnData, context: str) -> ad.AnnData:
    mask = (adata.obs["context"].astype(str) == context).to_numpy()
    out = adata[mask].copy()
    out.obs = out.obs.copy()
    return out


def score_predictions(
    real: ad.AnnData,
    pred: ad.AnnData | None,
    columns: ColumnsParams,
    *,
    profile: str,
    num_threads: int,
    seed: int,
) -> pd.DataFrame:
    """Per-perturbation cell-eval metrics of one predictor (or the ceiling when ``pred`` is None).

    Args:
        real: Real held-out cells plus their contexts' controls (obs ``context``).
        pred: Cell-level predictions with the same contexts, perturbations and var order,
            or ``None`` to compute cell-eval's data ceiling from ``real`` alone.
        columns: Column names (``pert_col`` and ``control_label`` are passed to cell-eval).
        profile: cell-eval metric profile.
        num_threads: Threads for the differential-expression step.
        seed: Seed of the ceiling's half split.

    Returns:
        One row per (context, perturbation) with a column per metric.
    """
    frames = []
    for context in _contexts(real):
        real_c = _subset(real, context)
        pred_c = None if pred is None else _subset(pred, context)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="cell-eval-") as tmp:
            evaluator = MetricsEvaluator(
                adata_pred=pred_c,
                adata_real=real_c,
                control_pert=columns.control_label,
                pert_col=columns.pert_col,
                num_threads=num_threads,
                outdir=f"{tmp}/out",  # cell-eval warns when its outdir already exists
            )
            if pred is None:
                results, _ = evaluator.compute_ceiling(profile=profile, write_csv=False, seed=seed)
            else:
                results, _ = evaluator.compute(profile=profile, write_csv=False)
        frame = results.to_pandas()
        frame.insert(0, "context", context)
        frames.append(frame)
        logger.info(
            "cell-eval %s on %s: %d perturbations in %.1f s",
            "ceiling" if pred is None else "prediction",
            context,
            len(frame),
            time.perf_counter() - started,
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def metric_columns(per_perturbation: pd.DataFrame) -> list[str]:
    """The metric columns of a per-perturbation table (everything but the identifiers)."""
    return [c for c in per_perturbation.columns if c not in ID_COLUMNS]


def _spearman_brown(value: float) -> float:
    return 2.0 * value / (1.0 + value) if value > 0 else float("nan")


def aggregate_metrics(per_perturbation: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per (split, predictor); the ceiling gets cell-eval's SB correction.

    Args:
        per_perturbation: Rows from :func:`score_predictions` with ``split`` and
            ``predictor`` columns added.

    Returns:
        One row per (split, predictor) with columns ``split``, ``predictor``,
        ``n_perturbations`` and the mean of each metric under its cell-eval name.
    """
    metrics = metric_columns(per_perturbation)
    grouped = per_perturbation.groupby(["split", "predictor"], sort=False)
    agg = grouped[metrics].mean(numeric_only=True).reset_index()
    agg.insert(2, "n_perturbations", grouped.size().to_numpy())
    is_ceiling = agg["predictor"] == CEILING
    for metric in metrics:
        if metric in SB_METRICS and metric in agg:
            agg.loc[is_ceiling, metric] = agg.loc[is_ceiling, metric].map(_spearman_brown)
    return agg


def add_normalised_scores(agg: pd.DataFrame, *, reference: str) -> pd.DataFrame:
    """Add cell-eval's normalised score of each predictor against ``reference``.

    cell-eval's ``score_agg_metrics`` maps each metric to ``(user - base) / (1 - base)``
    (or ``1 - user / base`` for error metrics), clips at zero and averages. The column
    is named ``score_vs_<reference>``; the reference itself scores 0.

    Args:
        agg: Output of :func:`aggregate_metrics`.
        reference: The predictor to normalise against (e.g. ``perturbation_mean``).

    Returns:
        A copy of ``agg`` with the score column.
    """
    out = agg.copy()
    column = f"score_vs_{reference}"
    out[column] = np.nan
    registered = set(metrics_registry.list_metrics())
    # de_nsig_counts_real/pred are counts, not scores: cell-eval's registry omits them
    metrics = [c for c in agg.columns if c in registered]
    for split, rows in agg.groupby("split", sort=False):
        base = rows.loc[rows["predictor"] == reference]
        if base.empty:
            logger.warning("split %s has no %s row: no normalised score", split, reference)
            continue
        base_pl = pl.DataFrame({"statistic": ["mean"], **{m: [base.iloc[0][m]] for m in metrics}})
        for idx, row in rows.iterrows():
            user_pl = pl.DataFrame({"statistic": ["mean"], **{m: [row[m]] for m in metrics}})
            scores = score_agg_metrics(user_pl, base_pl)
            avg = scores.filter(pl.col("metric") == "avg_score")["from_baseline"][0]
            out.loc[idx, column] = float(avg)
    return out
