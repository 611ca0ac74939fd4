"""Helpers of :mod:`perturbflow.preprocess.knockdown`: targets, gathering, control means."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.perturbations import components


def gather(X: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values ``X[rows[i], cols[i]]`` as a float64 vector, without densifying ``X``."""
    if rows.size == 0:
        return np.zeros(0)
    if sp.issparse(X):
        return np.asarray(X[rows, cols], dtype=np.float64).ravel()
    return np.asarray(X)[rows, cols].astype(np.float64)


def control_means(
    X: Any, ctrl_rows: np.ndarray, ctx_codes: np.ndarray, n_ctx: int, cols: np.ndarray, scale: str
) -> np.ndarray:
    """Mean of each target column over the control cells of each context (n_ctx x n_cols).

    A context without control cells gets the mean over all control cells. Only the
    control rows and target columns are read; the sums use a sparse context indicator.
    """
    if cols.size == 0:  # nothing measured: one dummy column keeps the caller's indexing valid
        return np.zeros((n_ctx, 1))
    if sp.issparse(X):
        Xc = X[ctrl_rows][:, cols]
        Xc = Xc.expm1() if scale == "linear" else Xc
    else:
        Xc = np.asarray(X)[np.ix_(ctrl_rows, cols)]
        Xc = np.expm1(Xc) if scale == "linear" else Xc
    ctx = ctx_codes[ctrl_rows]
    indicator = sp.csr_matrix(
        (np.ones(len(ctrl_rows)), (ctx, np.arange(len(ctrl_rows)))), shape=(n_ctx, len(ctrl_rows))
    )
    sums = indicator @ Xc
    sums = np.asarray(sums.toarray() if sp.issparse(sums) else sums, dtype=np.float64)
    n_ctrl = np.bincount(ctx, minlength=n_ctx)[:, None]
    global_mean = sums.sum(axis=0) / max(len(ctrl_rows), 1)
    return np.where(n_ctrl > 0, sums / np.maximum(n_ctrl, 1), global_mean)


def targets_per_label(
    obs: pd.DataFrame, labels: list[str], codes: np.ndarray, target_col: str | None, source: str
) -> list[tuple[str, ...]]:
    """Target genes of each perturbation label (from the label or from ``target_col``)."""
    if target_col is None:
        return [components(label) for label in labels]
    frame = pd.DataFrame({"code": codes, "target": obs[target_col].to_numpy(dtype=object)})
    per_label = frame.dropna().astype({"target": str}).groupby("code")["target"].unique()
    ambiguous = per_label[per_label.map(len) > 1]
    if len(ambiguous):
        examples = {labels[c]: list(v[:3]) for c, v in ambiguous.head(3).items()}
        raise InputError(
            f"{source}: {len(ambiguous)} perturbation(s) have several targets in obs column "
            f"{target_col!r} (knockdown.target_col), e.g. {examples}; each perturbation "
            "needs one target (write combinations as 'A+B')."
        )
    return [components(per_label[c][0]) if c in per_label.index else () for c in range(len(labels))]
