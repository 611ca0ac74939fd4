"""The knockdown filter's arithmetic: labels as codes, target slots, per-group residuals.

:func:`perturbflow.preprocess.knockdown.filter_on_target_knockdown` reads only the target
genes' columns: each cell's target expression is gathered with one fancy-indexing call and
grouped with ``np.bincount`` per (perturbation, context) group (no loop over cells). These
are its steps, each a small frozen record of arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from perturbflow.design import read_design
from perturbflow.exceptions import InputError, closest
from perturbflow.params import ColumnsParams, KnockdownParams
from perturbflow.preprocess._knockdown_utils import gather, targets_per_label


def exempt_labels(
    obs: pd.DataFrame, pert_codes: np.ndarray, n_labels: int, params: KnockdownParams
) -> np.ndarray:
    """Per perturbation label: True when none of its cells has a knockdown type."""
    if params.type_col is None:
        return np.zeros(n_labels, dtype=bool)
    is_kd = obs[params.type_col].astype(str).isin(params.knockdown_types).to_numpy()
    return np.bincount(pert_codes[is_kd], minlength=n_labels) == 0


@dataclasses.dataclass(frozen=True)
class LabelCodes:
    """Each cell's perturbation and context as integer codes, and which cells are controls."""

    pert_codes: np.ndarray
    labels: list[str]
    ctx_codes: np.ndarray
    contexts: list[str]
    control_code: int

    @property
    def n_ctx(self) -> int:
        """The number of contexts."""
        return len(self.contexts)

    @property
    def is_ctrl(self) -> np.ndarray:
        """Whether each cell is a control."""
        return self.pert_codes == self.control_code

    @classmethod
    def of(cls, obs: pd.DataFrame, columns: ColumnsParams, source: str) -> LabelCodes:
        """Codes of ``obs``; :class:`InputError` when the control label never occurs."""
        design = read_design(obs, columns)
        pert_codes, pert_uniques = pd.factorize(design["perturbation"])
        labels = [str(p) for p in pert_uniques]
        ctx_codes, ctx_uniques = pd.factorize(design["context"])
        control = columns.control_label
        if control not in labels:
            raise InputError(
                f"{source}: control label {control!r} does not occur in obs column "
                f"{columns.pert_col!r} ({len(labels):,} distinct values); closest: "
                f"{closest(control, labels, n=5) or labels[:5]}."
            )
        contexts = [str(c) for c in ctx_uniques]
        return cls(pert_codes, labels, ctx_codes, contexts, labels.index(control))


@dataclasses.dataclass(frozen=True)
class TargetSlots:
    """The measured target genes of every label, as slots of the gathered sub-matrix.

    ``table[label, k]`` is the slot (column of ``gene_cols``) of the label's k-th measured
    target, ``-1`` past its last one; controls and exempt labels have none.
    """

    targets: list[tuple[str, ...]]
    exempt: np.ndarray
    measured: list[tuple[str, ...]]
    genes: list[str]
    gene_cols: np.ndarray
    table: np.ndarray

    @property
    def kmax(self) -> int:
        """The most measured targets of one label (at least 1)."""
        return self.table.shape[1]

    @classmethod
    def of(
        cls,
        obs: pd.DataFrame,
        var_names: pd.Index,
        design: LabelCodes,
        params: KnockdownParams,
        source: str,
    ) -> TargetSlots:
        """Slots of every label's measured targets (none for controls and exempt labels)."""
        targets = targets_per_label(
            obs, design.labels, design.pert_codes, params.target_col, source
        )
        exempt = exempt_labels(obs, design.pert_codes, len(design.labels), params)
        var_index = pd.Index(var_names)
        measured = [
            tuple(g for g in t if g in var_index)
            if i != design.control_code and not exempt[i]
            else ()
            for i, t in enumerate(targets)
        ]
        genes = sorted({g for m in measured for g in m})
        slot_of = {g: s for s, g in enumerate(genes)}
        kmax = max([len(m) for m in measured] + [1])
        table = np.full((len(design.labels), kmax), -1, dtype=np.int64)
        for i, m in enumerate(measured):
            table[i, : len(m)] = [slot_of[g] for g in m]
        gene_cols = var_index.get_indexer(genes).astype(np.int64)
        return cls(targets, exempt, measured, genes, gene_cols, table)


@dataclasses.dataclass(frozen=True)
class KnockdownGroups:
    """Per (perturbation, context) group: its residual ratios, and which cells pass.

    Built from one (cell, measured target) pair per row, gathered in one fancy-indexing
    call and summed per group with ``np.bincount`` (no loop over cells).
    """

    codes: np.ndarray  # the group of every cell
    pert: np.ndarray  # the label code of every group
    ctx: np.ndarray  # the context code of every group
    ratio: np.ndarray  # groups x kmax: mean target expression / control mean
    any_measured: np.ndarray
    zero_ctrl: np.ndarray
    worst: np.ndarray  # the largest ratio over measured targets
    stage1: np.ndarray  # the group's knockdown passes residual_expression
    cell_measured: np.ndarray
    passing: np.ndarray  # cells whose every measured target passes the cell filter
    n_before: np.ndarray
    n_passing: np.ndarray
    kept: np.ndarray

    @classmethod
    def of(
        cls,
        X: object,
        design: LabelCodes,
        slots: TargetSlots,
        ctrl_mean: np.ndarray,
        params: KnockdownParams,
        scale: str,
    ) -> KnockdownGroups:
        """Residual ratios per group and the cells that pass, from the gathered targets."""
        kmax, n_ctx = slots.kmax, design.n_ctx
        cell_slots = slots.table[design.pert_codes]
        rows, ks = np.nonzero(cell_slots >= 0)
        pair_slots = cell_slots[rows, ks]
        vals = gather(X, rows, slots.gene_cols[pair_slots])
        if scale == "linear":
            vals = np.expm1(vals)
        pair_ctrl = ctrl_mean[design.ctx_codes[rows], pair_slots]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(pair_ctrl > 0, vals / pair_ctrl, np.inf)
        pair_ok = ratios < params.cell_residual_expression
        keys = design.pert_codes.astype(np.int64) * n_ctx + design.ctx_codes
        codes, group_keys = pd.factorize(keys)
        n_groups = len(group_keys)
        g_pert, g_ctx = group_keys // n_ctx, group_keys % n_ctx
        key = codes[rows] * kmax + ks
        psum = np.bincount(key, weights=vals, minlength=n_groups * kmax).reshape(n_groups, kmax)
        pcnt = np.bincount(key, minlength=n_groups * kmax).reshape(n_groups, kmax)
        g_slots = slots.table[g_pert]
        g_measured = g_slots >= 0
        g_ctrl = np.where(g_measured, ctrl_mean[g_ctx[:, None], np.maximum(g_slots, 0)], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(g_measured & (g_ctrl > 0), psum / np.maximum(pcnt, 1) / g_ctrl, np.nan)
        zero_ctrl = (g_measured & ~(g_ctrl > 0)).any(axis=1)
        any_measured = g_measured.any(axis=1)
        masked = np.nanmax(np.where(g_measured, ratio, -np.inf), axis=1)
        worst = np.where(any_measured & ~zero_ctrl, masked, np.nan)
        stage1 = any_measured & ~zero_ctrl & (worst < params.residual_expression)
        n_obs = len(design.pert_codes)
        cell_fail = np.bincount(rows, weights=(~pair_ok).astype(float), minlength=n_obs) > 0
        cell_measured = np.bincount(rows, minlength=n_obs) > 0
        passing = cell_measured & ~cell_fail
        n_passing = np.bincount(codes[passing], minlength=n_groups)
        kept = ~any_measured | (stage1 & (n_passing >= params.min_cells))
        return cls(
            codes=codes,
            pert=g_pert,
            ctx=g_ctx,
            ratio=ratio,
            any_measured=any_measured,
            zero_ctrl=zero_ctrl,
            worst=worst,
            stage1=stage1,
            cell_measured=cell_measured,
            passing=passing,
            n_before=np.bincount(codes, minlength=n_groups),
            n_passing=n_passing,
            kept=kept,
        )

    def kept_cells(self, design: LabelCodes, params: KnockdownParams) -> np.ndarray:
        """Controls, cells without a measured target, and passing cells of kept groups."""
        if not params.enabled:
            return np.ones(len(design.pert_codes), dtype=bool)
        return design.is_ctrl | ~self.cell_measured | (self.kept[self.codes] & self.passing)
