"""The design control pairing reads: integer codes of every cell, built once from ``obs``.

Contexts, cell types, batches and controls as codes (no per-cell strings), so that a
strategy (:mod:`perturbflow.loading.pairing_strategies`) pairs millions of cells with
numpy alone. The strategies and their registry: :mod:`perturbflow.loading.pairing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from perturbflow.design import context_key
from perturbflow.exceptions import InputError, suggest
from perturbflow.params import ColumnsParams

BATCH_STRATEGIES = ["batch", "batch_celltype", "control_mean (per='batch')"]


@dataclass(frozen=True, eq=False)
class PairingDesign:
    """Integer codes of every cell (AnnData row order), built once from ``obs``.

    Attributes:
        is_control: Whether each cell is a control.
        context: Code per cell into ``context_labels`` (sorted ``dataset.celltype``).
        context_labels: Context labels.
        celltype: Code per cell into ``celltype_labels`` (sorted cell types).
        celltype_labels: Cell type labels.
        batch: Code per cell into ``batch_labels``, or ``None`` without a batch column.
        batch_labels: Sorted batch labels, or ``None``.
        batch_col: The obs batch column (for messages), or ``None``.
        control_desc: How controls were recognised (for messages).
    """

    is_control: np.ndarray
    context: np.ndarray
    context_labels: list[str]
    celltype: np.ndarray
    celltype_labels: list[str]
    batch: np.ndarray | None = None
    batch_labels: list[str] | None = None
    batch_col: str | None = None
    control_desc: str = "control cells"

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.is_control)

    @classmethod
    def from_obs(
        cls,
        obs: pd.DataFrame,
        columns: ColumnsParams,
        strategy: Any = None,
    ) -> PairingDesign:
        """Read the codes from ``obs``; a ``strategy``, if given, is checked too.

        Raises:
            InputError: A configured column is missing (lists the available ones) or has
                missing values, the control label never occurs, or ``strategy`` pairs
                within batches and ``columns.batch_col`` is null.
        """
        available = [str(c) for c in obs.columns]
        for param in ("pert_col", "celltype_col", "dataset_col", "batch_col"):
            column = getattr(columns, param)
            if column is not None and column not in obs.columns:
                raise InputError(
                    f"Control pairing: obs column {column!r} (columns.{param}) is missing. "
                    f"Available columns: {available}.{suggest(column, available)}"
                )
        pert = obs[columns.pert_col]
        is_control = (pert == columns.control_label).to_numpy(dtype=bool)
        if not is_control.any():
            raise InputError(
                f"Control pairing: control label {columns.control_label!r} (columns."
                f"control_label) never occurs in obs column {columns.pert_col!r}."
                f"{suggest(columns.control_label, pert.dropna().astype(str).unique())}"
            )
        celltype, ct_labels = _codes(obs, columns.celltype_col)
        dataset, ds_labels = np.zeros(len(obs), np.int64), [columns.dataset_name]
        if columns.dataset_col is not None:
            dataset, ds_labels = _codes(obs, columns.dataset_col)
        n_ct = len(ct_labels)
        uniq, context = np.unique(dataset * n_ct + celltype, return_inverse=True)
        batch, batch_labels = _codes(obs, columns.batch_col) if columns.batch_col else (None, None)
        design = cls(
            is_control=is_control,
            context=context.astype(np.int32),
            context_labels=[context_key(ds_labels[k // n_ct], ct_labels[k % n_ct]) for k in uniq],
            celltype=celltype.astype(np.int32),
            celltype_labels=ct_labels,
            batch=None if batch is None else batch.astype(np.int32),
            batch_labels=batch_labels,
            batch_col=columns.batch_col,
            control_desc=f"{columns.control_label!r} in obs column {columns.pert_col!r}",
        )
        if getattr(strategy, "needs_batch", False):
            design.require_batch(strategy.name)  # type: ignore[union-attr]
        return design

    def require_batch(self, strategy: str) -> None:
        """Fail when a strategy that pairs within batches meets a design without batches."""
        if self.batch is None:
            raise InputError(
                f"Pairing strategy {strategy!r} pairs within batches but columns.batch_col is "
                f"null; set it to the obs batch column. Strategies that need it: "
                f"{BATCH_STRATEGIES}."
            )


def _codes(obs: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str]]:
    """Codes of an obs column into its sorted string labels (missing values fail)."""
    codes, uniques = pd.factorize(obs[column])
    if (codes < 0).any():
        raise InputError(
            f"Control pairing: obs column {column!r} has {int((codes < 0).sum()):,} missing "
            "values; every cell needs one."
        )
    labels, inverse = np.unique(np.array([str(u) for u in uniques]), return_inverse=True)
    return inverse[codes].astype(np.int64), labels.tolist()
