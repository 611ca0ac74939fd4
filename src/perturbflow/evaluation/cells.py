"""Cell-level real and predicted AnnData in the form cell-eval expects.

cell-eval compares a predicted and a real AnnData that share the var order and the set
of perturbations, control included. A predicted perturbation gets as many cells as the
real one; each predicted cell is a real control cell of the same context (sampled without
replacement while there are enough, the sample centred on the mean of all the context's
controls) plus the predicted delta. Repeating one mean vector
instead would make nearly every gene "significant" in cell-eval's differential
expression test and distort the DE metrics. Predicted values are clipped at zero: a
log1p expression cannot be negative (and cell-eval rejects negative log1p data).
"""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np

from perturbflow.baselines.simple import Key, PredictedEffect
from perturbflow.params import ColumnsParams
from perturbflow.predictions import _obs, assemble_predictions, shifted_controls
from perturbflow.splits.data import SplitCells


def real_adata(data: SplitCells, label: str, columns: ColumnsParams) -> ad.AnnData:
    """The real held-out cells of ``label`` plus the control cells of their contexts.

    Args:
        data: Expression and labels of the split.
        label: ``"test"`` or ``"val"``.
        columns: Column names; the output's obs uses the user's column names and the
            control label of the configuration.

    Returns:
        An AnnData with the split's gene space in ``X``.
    """
    rows, perts = [], []
    for context in data.heldout_contexts(label):
        ctrl = data.control_rows(context)
        rows.append(ctrl)
        perts += [columns.control_label] * len(ctrl)
        for pert in data.heldout_perturbations(context, label):
            r = data.perturbation_rows(context, pert, label)
            rows.append(r)
            perts += [pert] * len(r)
    idx = np.concatenate(rows) if rows else np.zeros(0, dtype=int)
    cells = data.cells.iloc[idx]
    obs = _obs(
        columns,
        perturbation=perts,
        dataset=cells["dataset"].tolist(),
        celltype=cells["celltype"].tolist(),
        context=cells["context"].tolist(),
        names=cells.index.astype(str).tolist(),
    )
    out = ad.AnnData(X=data.X[idx].copy(), obs=obs)
    out.var_names = data.genes
    return out


def predicted_adata(
    data: SplitCells,
    label: str,
    effects: Mapping[Key, PredictedEffect],
    columns: ColumnsParams,
    *,
    seed: int,
) -> ad.AnnData:
    """Cell-level predictions for every held-out perturbation of ``label``.

    Args:
        data: Expression and labels of the split.
        label: ``"test"`` or ``"val"``.
        effects: Predicted delta per ``(context, perturbation)``.
        columns: Column names (see :func:`real_adata`).
        seed: Seed of the control-cell sampling.

    Returns:
        An AnnData with, per context, its real control cells followed by the predicted
        cells of each held-out perturbation (as many as the real ones).

    Raises:
        KeyError: If a held-out perturbation has no predicted effect.
    """
    rng = np.random.default_rng(seed)
    cells = {}
    for context in data.heldout_contexts(label):
        ctrl = data.control_rows(context)
        for pert in data.heldout_perturbations(context, label):
            n = len(data.perturbation_rows(context, pert, label))
            picked = rng.choice(ctrl, size=n, replace=n > len(ctrl))
            cells[(context, pert)] = shifted_controls(
                data.X[picked], data.control_mean(context), effects[(context, pert)].delta
            )
    return assemble_predictions(data, cells, columns)
