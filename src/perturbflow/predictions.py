"""Predicted cells in the form cell-eval expects: per context its real controls, then predictions.

Every predictor (the baselines, the ST model, a finetuned or adapted one, ``perturbflow
infer``) hands its predicted cells per ``(context, perturbation)`` to
:func:`assemble_predictions`, which writes them beside the context's real control cells with
the design columns cell-eval reads (``pert_col``, cell type, dataset, ``context``), genes in
the split's order.
"""

from __future__ import annotations

from collections.abc import Mapping

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.params import ColumnsParams
from perturbflow.splits.data import SplitCells

Key = tuple[str, str]


def _obs(
    columns: ColumnsParams,
    *,
    perturbation: list[str],
    dataset: list[str],
    celltype: list[str],
    context: list[str],
    names: list[str],
) -> pd.DataFrame:
    frame = {
        columns.pert_col: perturbation,
        columns.celltype_col: celltype,
        "context": context,
    }
    frame[columns.dataset_col or "dataset"] = dataset
    obs = pd.DataFrame(frame, index=pd.Index(names, name=None))
    for col in obs.columns:
        obs[col] = obs[col].astype("category")
    return obs


def _context_parts(data: SplitCells, context: str) -> tuple[str, str]:
    return data.context_parts[context]


def assemble_predictions(
    data: SplitCells,
    cells: Mapping[Key, np.ndarray],
    columns: ColumnsParams,
) -> ad.AnnData:
    """Predicted cells in cell-eval's form: per context its real controls, then predictions.

    Args:
        data: Expression and labels (the contexts' control cells are copied from it).
        cells: Predicted cells (``n x genes``) per ``(context, perturbation)``, in the
            order they should appear within each context.
        columns: Column names; the control cells carry ``columns.control_label``.

    Returns:
        The AnnData, genes as in ``data.genes``.
    """
    blocks, perts, contexts, names = [], [], [], []
    by_context: dict[str, list[Key]] = {}
    for key in cells:
        by_context.setdefault(key[0], []).append(key)
    for context in sorted(by_context):
        ctrl = data.control_rows(context)
        blocks.append(data.X[ctrl])
        perts += [columns.control_label] * len(ctrl)
        contexts += [context] * len(ctrl)
        names += [f"ctrl:{n}" for n in data.cells.index[ctrl]]
        for key in by_context[context]:
            pert = key[1]
            n = len(cells[key])
            blocks.append(np.asarray(cells[key], dtype=np.float32))
            perts += [pert] * n
            contexts += [context] * n
            names += [f"pred:{context}:{pert}:{i}" for i in range(n)]
    parts = {c: _context_parts(data, c) for c in set(contexts)}
    obs = _obs(
        columns,
        perturbation=perts,
        dataset=[parts[c][0] for c in contexts],
        celltype=[parts[c][1] for c in contexts],
        context=contexts,
        names=names,
    )
    X = np.vstack(blocks) if blocks else np.zeros((0, len(data.genes)), dtype=np.float32)
    out = ad.AnnData(X=X.astype(np.float32, copy=False), obs=obs)
    out.var_names = data.genes
    return out


def shifted_controls(
    sample: np.ndarray, population_mean: np.ndarray, delta: np.ndarray, *, clip: bool = True
) -> np.ndarray:
    """Control cells moved by a predicted delta: what a shift predictor's cells are.

    The sampled cells are first centred on the mean of *all* the context's controls, so the
    predicted population's mean is exactly ``control mean + delta``: which control cells
    happened to be drawn would otherwise move every figure by as much as a weak
    perturbation's effect (on the zero-shot split, pearson_delta by several hundredths).
    With ``clip`` (log1p expression) the cells are clipped at zero keeping that mean
    (:func:`clip_keeping_mean`); without it (e.g. an embedding) they are returned as moved.
    """
    sample = np.asarray(sample, dtype=np.float32)
    centre = (population_mean - sample.mean(axis=0)).astype(np.float32)
    cells = sample + centre + np.asarray(delta, dtype=np.float32)
    return clip_keeping_mean(cells) if clip else cells


def shifted_mean_delta(control_mean: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The mean delta of :func:`shifted_controls`' clipped cells: ``max(mean + delta, 0) - mean``.

    What a shift predictor's cells score on pearson_delta, and so what its validation
    figure must be computed from.
    """
    control_mean = np.asarray(control_mean, dtype=np.float64)
    return np.maximum(control_mean + np.asarray(delta, dtype=np.float64), 0.0) - control_mean


def clip_keeping_mean(cells: np.ndarray, *, genes_per_block: int = 256) -> np.ndarray:
    """Cells clipped at zero with each gene's mean kept (zero where it was negative).

    A shift predictor moves control cells by a delta; on sparse log1p data most entries
    are zero, and a plain clip after a negative shift raises the gene's mean back up by
    an amount that depends on which cells were drawn (on the zero-shot split, by up to a
    tenth of a gene's mean between draws): the prediction then is not the delta it claims,
    and two predictors with the same delta score differently. Here each gene's column
    gets the one extra shift ``s`` for which ``mean(max(x + s, 0))`` equals the column's
    mean before clipping (clipped at zero): solved exactly from the column's sorted values,
    since that mean is piecewise linear and increasing in ``s``. Numpy has no such
    operation, hence by hand; genes in blocks so the sorted copy stays small.

    Args:
        cells: ``n x genes`` values (e.g. moved control cells in log1p space).
        genes_per_block: Genes sorted at a time.

    Returns:
        Non-negative ``float32`` cells, each gene's mean equal to ``max(mean before, 0)``.
    """
    cells = np.asarray(cells, dtype=np.float32)
    n = cells.shape[0]
    out = np.empty_like(cells)
    if n == 0:
        return out
    ranks = np.arange(1, n + 1, dtype=np.float64)[:, None]
    for start in range(0, cells.shape[1], genes_per_block):
        block = cells[:, start : start + genes_per_block].astype(np.float64)
        target = np.clip(block.mean(axis=0), 0.0, None)
        top = -np.sort(-block, axis=0)  # each column, largest first
        # with the k largest values above zero: mean = (sum of them + k s) / n; the k is
        # the largest whose own value stays above zero (as in a projection onto the simplex)
        shift = (n * target - np.cumsum(top, axis=0)) / ranks
        above = top + shift > 0  # row 0 holds wherever target > 0
        k = n - 1 - np.argmax(above[::-1], axis=0)
        s = shift[k, np.arange(top.shape[1])]
        s = np.where(target > 0, s, -np.inf)  # a mean at zero: every cell at zero
        out[:, start : start + genes_per_block] = np.clip(block + s, 0.0, None)
    return out
