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

from perturbflow.exceptions import InputError, suggest
from perturbflow.params import ColumnsParams, KnockdownParams
from perturbflow.preprocess._knockdown_utils import control_means
from perturbflow.preprocess.knockdown_groups import KnockdownGroups, LabelCodes, TargetSlots
from perturbflow.preprocess.normalize import record_uns
from perturbflow.preprocess.validation import (
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
    X, where = _checked_matrix(adata, columns, params, layer=layer, scale=scale, source=source)
    design = LabelCodes.of(adata.obs, columns, source)
    slots = TargetSlots.of(adata.obs, adata.var_names, design, params, source)
    ctrl_mean = control_means(
        X, np.flatnonzero(design.is_ctrl), design.ctx_codes, design.n_ctx, slots.gene_cols, scale
    )
    groups = KnockdownGroups.of(X, design, slots, ctrl_mean, params, scale)
    keep = groups.kept_cells(design, params)
    report = _report(design, slots, groups, keep, params)
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
            "n_cells_dropped": int(adata.n_obs - keep.sum()),
        },
    )
    _log_outcome(report, keep, n_genes=len(slots.genes), scale=scale, enabled=params.enabled)
    return out, report


def _checked_matrix(
    adata: ad.AnnData,
    columns: ColumnsParams,
    params: KnockdownParams,
    *,
    layer: str | None,
    scale: str,
    source: str,
) -> tuple[object, str]:
    """The log1p matrix the filter reads and its name; every input check before any work."""
    if scale not in ("linear", "log1p"):
        raise InputError(f"{source}: scale={scale!r} must be 'linear' or 'log1p'.")
    require_columns(
        adata.obs,
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
    return X, where


def _reason(g: int, design: LabelCodes, slots: TargetSlots, groups: KnockdownGroups, params) -> str:
    """Why group ``g`` was kept or dropped, in words (the report's ``reason``)."""
    meas = slots.measured[groups.pert[g]]
    if not params.enabled:
        return "knockdown filter disabled"
    if slots.exempt[groups.pert[g]]:
        return f"not a knockdown ({params.type_col} not in {list(params.knockdown_types)})"
    if not groups.any_measured[g]:
        return "target not measured"
    if groups.zero_ctrl[g]:
        return "target not expressed in control cells"
    if not groups.stage1[g]:
        ratio = groups.ratio[g, : len(meas)]
        at = "" if len(meas) == 1 else f" for {meas[int(np.nanargmax(ratio))]}"
        up = "; target up-regulated" if groups.worst[g] >= UPREGULATED else ""
        return (
            f"weak knockdown (residual {groups.worst[g]:.2f} >= "
            f"{params.residual_expression:.2f}{at}{up})"
        )
    if groups.n_passing[g] < params.min_cells:
        return f"too few cells after cell filter ({groups.n_passing[g]} < {params.min_cells})"
    return "kept"


def _report(
    design: LabelCodes,
    slots: TargetSlots,
    groups: KnockdownGroups,
    keep: np.ndarray,
    params: KnockdownParams,
) -> pd.DataFrame:
    """One row per (perturbation, context), controls excluded (see REPORT_COLUMNS)."""
    n_after = np.bincount(groups.codes[keep], minlength=len(groups.pert))
    records = []
    for g in range(len(groups.pert)):
        label = groups.pert[g]
        if label == design.control_code:
            continue
        meas = slots.measured[label]
        measured = bool(groups.any_measured[g])
        records.append(
            {
                "perturbation": design.labels[label],
                "context": design.contexts[groups.ctx[g]],
                "targets": "+".join(slots.targets[label]),
                "measured_targets": "+".join(meas),
                "measured": measured,
                "n_cells_before": int(groups.n_before[g]),
                "n_cells_passing": int(groups.n_passing[g] if measured else groups.n_before[g]),
                "n_cells_after": int(n_after[g]),
                "residual_expression": float(groups.worst[g]),
                "residual_by_target": ", ".join(
                    f"{gene}={groups.ratio[g, k]:.3f}" for k, gene in enumerate(meas)
                ),
                "kept": bool(groups.kept[g] or not params.enabled),
                "reason": _reason(g, design, slots, groups, params),
            }
        )
    report = pd.DataFrame.from_records(records, columns=REPORT_COLUMNS)
    return report.sort_values(["context", "perturbation"], ignore_index=True)


def _log_outcome(
    report: pd.DataFrame, keep: np.ndarray, *, n_genes: int, scale: str, enabled: bool
) -> None:
    """What the filter kept and dropped; a warning when targets went up (CRISPRa data)."""
    dropped = report.loc[~report["kept"], "perturbation"]
    logger.info(
        "Knockdown filter (%s ratios, %d measured targets): kept %d of %d cells; dropped %d "
        "perturbation/context pair(s)%s",
        scale,
        n_genes,
        int(keep.sum()),
        len(keep),
        len(dropped),
        f": {sorted(set(dropped))}" if len(dropped) else "",
    )
    upregulated = report.loc[report["residual_expression"] >= UPREGULATED, "perturbation"]
    if enabled and len(upregulated):
        logger.warning(
            "%d perturbation(s) raise their target's expression (%s): the knockdown filter "
            "drops them; disable it (knockdown.enabled: false) for CRISPRa/overexpression data",
            len(upregulated),
            sorted(set(upregulated))[:10],
        )
