"""How variable predicted cells are, per gene, against the real cells of a perturbation."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.evaluation.benchmark import PREDICTION_SEP, materialise
from perturbflow.params import ColumnsParams


def std_ratio(pred: np.ndarray, real: np.ndarray, *, min_std: float = 1e-6) -> float:
    """Median over genes of ``std(pred) / std(real)`` (genes with real variation only).

    1 means "as variable as real cells"; STATE's predictions were reported near 0.1.
    """
    sd_real = np.asarray(real, dtype=np.float64).std(axis=0)
    sd_pred = np.asarray(pred, dtype=np.float64).std(axis=0)
    keep = sd_real > min_std
    return float(np.median(sd_pred[keep] / sd_real[keep])) if keep.any() else float("nan")


def _dense(adata: ad.AnnData) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def variability_table(
    predictions: Mapping[str, ad.AnnData | Callable[[], ad.AnnData]],
    reals: Mapping[str, ad.AnnData | Callable[[], ad.AnnData]],
    columns: ColumnsParams,
) -> pd.DataFrame:
    """Per split and predictor, the per-perturbation std ratio (mean, min, max).

    Args:
        predictions: Cell-level predictions keyed ``"<split>/<predictor>"``.
        reals: Real held-out cells keyed by split.
        columns: Column names of the design.

    Returns:
        One row per (split, predictor): ``std_ratio_mean``, ``std_ratio_min``,
        ``std_ratio_max`` and ``n_perturbations``.
    """
    rows = []
    loaded = {split: materialise(real) for split, real in reals.items()}
    for key in sorted(predictions):
        split, predictor = key.split(PREDICTION_SEP, 1)
        if split not in loaded:
            continue
        pred, real = materialise(predictions[key]), loaded[split]
        p_lab = pred.obs["context"].astype(str) + "|" + pred.obs[columns.pert_col].astype(str)
        r_lab = real.obs["context"].astype(str) + "|" + real.obs[columns.pert_col].astype(str)
        p_X, r_X = _dense(pred), _dense(real)
        p_lab, r_lab = p_lab.to_numpy(), r_lab.to_numpy()
        is_ctrl = real.obs[columns.pert_col].astype(str).to_numpy() == columns.control_label
        ratios = [
            std_ratio(p_X[p_lab == lab], r_X[r_lab == lab])
            for lab in sorted(set(r_lab[~is_ctrl]) & set(p_lab))
        ]
        ratios = [r for r in ratios if np.isfinite(r)]
        rows.append(
            {
                "split": split,
                "predictor": predictor,
                "n_perturbations": len(ratios),
                "std_ratio_mean": float(np.mean(ratios)) if ratios else float("nan"),
                "std_ratio_min": float(np.min(ratios)) if ratios else float("nan"),
                "std_ratio_max": float(np.max(ratios)) if ratios else float("nan"),
            }
        )
    return pd.DataFrame(rows)
