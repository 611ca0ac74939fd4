"""On-target knockdown filter (the semantics of cell-load's ``filter_on_target_knockdown``).

For every (perturbation, context) whose target gene is measured:

1. perturbation level: mean target expression in its cells / mean in the control cells
   of the same context (all control cells when the context has none) must be below
   ``residual_expression``;
2. cell level: a cell stays only if its own target expression / that control mean is
   below ``cell_residual_expression``;
3. the perturbation stays only if at least ``min_cells`` cells pass step 2.

A combination ``A+B`` is checked on each measured component: it passes a step only if
every measured component does. Perturbations whose target is not measured are kept (and
listed as such); control cells are always kept.

Differences from cell-load, on purpose:

* Ratios are computed on **linear** normalised expression (``expm1`` of the log1p
  matrix) by default, so "residual 0.30" means "30% of the control mRNA left" whatever
  ``target_sum`` was; a ratio of log1p values depends on the normalisation scale (on the
  Papalexi screen the same cells give 0.23 in linear and 0.34 in log1p space).
  ``scale="log1p"`` reproduces cell-load, which divides the values of the matrix it is
  given (log-normalised).
* The control mean is taken per context ("dataset.celltype"), since expression levels
  differ between cell types; cell-load uses one global control mean.
* cell-load drops perturbations whose target is not measured; they are kept here.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.exceptions import InputError, closest, suggest
from perturbflow.params import ColumnsParams, KnockdownParams
from perturbflow.preprocess._knockdown_utils import control_means, gather, targets_per_label
from perturbflow.preprocess.normalize import record_uns
from perturbflow.preprocess.validation import (
    context_labels,
    detect_expression_kind,
    require_columns,
)

logger = logging.getLogger(__name__)

#: A residual at least this large means the target went up (CRISPRa, overexpression).
UPREGULATED = 2.0

REPORT_COLUMNS = [
    "perturbation",
    "context",
    "targets",
    "measured_targets",
    "measured",
    "n_cells_before",
    "n_cells_passing",
    "n_cells_after",
    "residual_expression",
    "residual_by_target",
    "kept",
    "reason",
]


def knockdown_settings(
    obs_columns: pd.Index, params: KnockdownParams, *, source: str
) -> KnockdownParams:
    """The knockdown settings usable on this ``obs``: only an enabled filter needs its columns.

    Args:
        obs_columns: The columns of the input's ``obs``.
        params: ``preprocessing.knockdown``.
        source: Name of the input (its path), first word of an error.

    Returns:
        ``params``; with the filter disabled, a ``target_col``/``type_col`` the data lack is
        set to ``None`` (the ratios are then reported for every perturbation, its targets
        parsed from the perturbation label).

    Raises:
        InputError: The filter is enabled and a column it reads is missing (named by its
            key, ``preprocessing.knockdown.type_col``).
    """
    names = [("target_col", params.target_col), ("type_col", params.type_col)]
    missing = [name for name, col in names if col is not None and col not in obs_columns]
    if not missing:
        return params
    if params.enabled:
        require_columns(
            pd.DataFrame(columns=obs_columns),
            [(f"preprocessing.knockdown.{name}", col) for name, col in names],
            source=source,
        )
    logger.info(
        "%s: the knockdown filter is disabled and obs has no %s column; its residuals are "
        "reported for every perturbation, nothing is dropped.",
        source,
        " / ".join(repr(getattr(params, n)) for n in missing),
    )
    return dataclasses.replace(params, **dict.fromkeys(missing))


def _exempt_labels(
    obs: pd.DataFrame, pert_codes: np.ndarray, n_labels: int, params: KnockdownParams
) -> np.ndarray:
    """Per perturbation label: True when none of its cells has a knockdown type."""
    if params.type_col is None:
        return np.zeros(n_labels, dtype=bool)
    is_kd = obs[params.type_col].astype(str).isin(params.knockdown_types).to_numpy()
    return np.bincount(pert_codes[is_kd], minlength=n_labels) == 0


def filter_on_target_knockdown(
    adata: ad.AnnData,
    columns: ColumnsParams,
    params: KnockdownParams,
    *,
    layer: str | None = None,
    scale: Literal["linear", "log1p"] = "linear",
    source: str = "<adata>",
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Drop perturbations and cells without on-target knockdown (see the module docstring).

    Only the target-gene columns are read: each cell's target expression is gathered
    with one fancy-indexing call and grouped with ``np.bincount`` (no loop over cells).

    Args:
        adata: log1p-normalised screen; never modified.
        columns: Where the design lives in ``obs``.
        params: Thresholds. With ``enabled=False`` nothing is dropped but the ratios are
            still reported.
        layer: Layer holding log1p-normalised expression, or ``None`` for ``X``.
        scale: ``"linear"`` (ratios of ``expm1`` values, default) or ``"log1p"``
            (ratios of the log1p values, as cell-load).
        source: Name of the input, first word of error messages.

    Returns:
        The filtered copy and one report row per (perturbation, context), controls
        excluded: ``perturbation``, ``context``, ``targets``, ``measured_targets``,
        ``measured``, ``n_cells_before``, ``n_cells_passing`` (cells passing the cell
        filter), ``n_cells_after``, ``residual_expression`` (perturbation-level ratio;
        the largest over measured components, NaN when nothing is measured),
        ``residual_by_target``, ``kept`` and ``reason``.

    Raises:
        InputError: Missing column or layer, raw counts in the matrix, absent control
            label, or a perturbation with several targets in ``target_col``.
    """
    if scale not in ("linear", "log1p"):
        raise InputError(f"{source}: scale={scale!r} must be 'linear' or 'log1p'.")
    obs = adata.obs
    require_columns(
        obs,
        [
            ("columns.pert_col", columns.pert_col),
            ("columns.celltype_col", columns.celltype_col),
            ("columns.dataset_col", columns.dataset_col),
            ("preprocessing.knockdown.target_col", params.target_col),
            ("preprocessing.knockdown.type_col", params.type_col),
        ],
        source=source,
    )
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"{source}: layer {layer!r} is not in adata.layers "
            f"(available: {list(adata.layers)}).{suggest(layer, adata.layers)}"
        )
    X = adata.X if layer is None else adata.layers[layer]
    where = "X" if layer is None else f"layers[{layer!r}]"
    if detect_expression_kind(X) == "counts":
        raise InputError(
            f"{source}: {where} holds raw counts; the knockdown filter needs log1p-normalised "
            "expression. Run normalize_log1p(adata, kind='counts', ...) first."
        )

    pert_codes, pert_uniques = pd.factorize(obs[columns.pert_col].astype(str))
    labels = [str(p) for p in pert_uniques]
    ctx_codes, ctx_uniques = pd.factorize(context_labels(obs, columns))
    n_ctx = len(ctx_uniques)
    control = columns.control_label
    if control not in labels:
        raise InputError(
            f"{source}: control label {control!r} does not occur in obs column "
            f"{columns.pert_col!r} ({len(labels):,} distinct values); closest: "
            f"{closest(control, labels, n=5) or labels[:5]}."
        )
    control_code = labels.index(control)
    is_ctrl = pert_codes == control_code

    # Target genes -> slots (columns of the gathered sub-matrix).
    targets = targets_per_label(obs, labels, pert_codes, params.target_col, source)
    exempt = _exempt_labels(obs, pert_codes, len(labels), params)
    var_index = pd.Index(adata.var_names)
    measured = [
        tuple(g for g in t if g in var_index) if i != control_code and not exempt[i] else ()
        for i, t in enumerate(targets)
    ]
    genes = sorted({g for m in measured for g in m})
    slot_of = {g: s for s, g in enumerate(genes)}
    gene_cols = var_index.get_indexer(genes).astype(np.int64)
    kmax = max([len(m) for m in measured] + [1])
    table = np.full((len(labels), kmax), -1, dtype=np.int64)
    for i, m in enumerate(measured):
        table[i, : len(m)] = [slot_of[g] for g in m]

    ctrl_mean = control_means(X, np.flatnonzero(is_ctrl), ctx_codes, n_ctx, gene_cols, scale)

    # One (cell, measured target) pair per row.
    cell_slots = table[pert_codes]
    rows, ks = np.nonzero(cell_slots >= 0)
    slots = cell_slots[rows, ks]
    vals = gather(X, rows, gene_cols[slots])
    if scale == "linear":
        vals = np.expm1(vals)
    pair_ctrl = ctrl_mean[ctx_codes[rows], slots]
    with np.errstate(divide="ignore", invalid="ignore"):
        pair_ok = (
            np.where(pair_ctrl > 0, vals / pair_ctrl, np.inf) < params.cell_residual_expression
        )

    # (perturbation, context) groups.
    group_codes, group_keys = pd.factorize(pert_codes.astype(np.int64) * n_ctx + ctx_codes)
    n_groups = len(group_keys)
    g_pert, g_ctx = group_keys // n_ctx, group_keys % n_ctx
    key = group_codes[rows] * kmax + ks
    psum = np.bincount(key, weights=vals, minlength=n_groups * kmax).reshape(n_groups, kmax)
    pcnt = np.bincount(key, minlength=n_groups * kmax).reshape(n_groups, kmax)
    g_slots = table[g_pert]
    g_measured = g_slots >= 0
    g_ctrl = np.where(g_measured, ctrl_mean[g_ctx[:, None], np.maximum(g_slots, 0)], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g_measured & (g_ctrl > 0), psum / np.maximum(pcnt, 1) / g_ctrl, np.nan)
    zero_ctrl = (g_measured & ~(g_ctrl > 0)).any(axis=1)
    any_measured = g_measured.any(axis=1)
    worst = np.where(
        any_measured & ~zero_ctrl, np.nanmax(np.where(g_measured, ratio, -np.inf), axis=1), np.nan
    )
    stage1 = any_measured & ~zero_ctrl & (worst < params.residual_expression)

    n_obs = adata.n_obs
    cell_fail = np.bincount(rows, weights=(~pair_ok).astype(float), minlength=n_obs) > 0
    cell_measured = np.bincount(rows, minlength=n_obs) > 0
    passing = cell_measured & ~cell_fail
    n_before = np.bincount(group_codes, minlength=n_groups)
    n_passing = np.bincount(group_codes[passing], minlength=n_groups)
    group_kept = ~any_measured | (stage1 & (n_passing >= params.min_cells))
    if params.enabled:
        keep = is_ctrl | ~cell_measured | (group_kept[group_codes] & passing)
    else:
        keep = np.ones(n_obs, dtype=bool)
    n_after = np.bincount(group_codes[keep], minlength=n_groups)

    records = []
    for g in range(n_groups):
        if g_pert[g] == control_code:
            continue
        meas = measured[g_pert[g]]
        by_target = ", ".join(f"{gene}={ratio[g, k]:.3f}" for k, gene in enumerate(meas))
        if not params.enabled:
            reason = "knockdown filter disabled"
        elif exempt[g_pert[g]]:
            reason = f"not a knockdown ({params.type_col} not in {list(params.knockdown_types)})"
        elif not any_measured[g]:
            reason = "target not measured"
        elif zero_ctrl[g]:
            reason = "target not expressed in control cells"
        elif not stage1[g]:
            at = "" if len(meas) == 1 else f" for {meas[int(np.nanargmax(ratio[g, : len(meas)]))]}"
            up = "; target up-regulated" if worst[g] >= UPREGULATED else ""
            reason = (
                f"weak knockdown (residual {worst[g]:.2f} >= "
                f"{params.residual_expression:.2f}{at}{up})"
            )
        elif n_passing[g] < params.min_cells:
            reason = f"too few cells after cell filter ({n_passing[g]} < {params.min_cells})"
        else:
            reason = "kept"
        records.append(
            {
                "perturbation": labels[g_pert[g]],
                "context": str(ctx_uniques[g_ctx[g]]),
                "targets": "+".join(targets[g_pert[g]]),
                "measured_targets": "+".join(meas),
                "measured": bool(any_measured[g]),
                "n_cells_before": int(n_before[g]),
                "n_cells_passing": int(n_passing[g] if any_measured[g] else n_before[g]),
                "n_cells_after": int(n_after[g]),
                "residual_expression": float(worst[g]),
                "residual_by_target": by_target,
                "kept": bool(group_kept[g] or not params.enabled),
                "reason": reason,
            }
        )
    report = pd.DataFrame.from_records(records, columns=REPORT_COLUMNS)
    report = report.sort_values(["context", "perturbation"], ignore_index=True)

    out = adata[keep].copy()
    record_uns(
        out,
        "knockdown",
        {
            "enabled": bool(params.enabled),
            "scale": scale,
            "matrix": where,
            "residual_expression": float(params.residual_expression),
            "cell_residual_expression": float(params.cell_residual_expression),
            "min_cells": int(params.min_cells),
            "n_cells_dropped": int(n_obs - keep.sum()),
        },
    )
    dropped = report.loc[~report["kept"], "perturbation"]
    logger.info(
        "Knockdown filter (%s ratios, %d measured targets): kept %d of %d cells; dropped %d "
        "perturbation/context pair(s)%s",
        scale,
        len(genes),
        int(keep.sum()),
        n_obs,
        len(dropped),
        f": {sorted(set(dropped))}" if len(dropped) else "",
    )
    upregulated = report.loc[report["residual_expression"] >= UPREGULATED, "perturbation"]
    if params.enabled and len(upregulated):
        logger.warning(
            "%d perturbation(s) raise their target's expression (%s): the knockdown filter "
            "drops them; disable it (knockdown.enabled: false) for CRISPRa/overexpression data",
            len(upregulated),
            sorted(set(upregulated))[:10],
        )
    return out, report
