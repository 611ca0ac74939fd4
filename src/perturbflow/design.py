"""The design of a screen: each cell's dataset, cell type, context and perturbation.

A *context* is a (dataset, cell type) pair, written ``"dataset.celltype"`` (joined by
:data:`CONTEXT_SEP`) as in STATE's TOML files. :func:`read_design` is the one place that
turns an AnnData ``obs`` into these design columns; the split table, the preprocessing
checks and reports, and inference all read them through it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from perturbflow.exceptions import InputError, suggest
from perturbflow.params import ColumnsParams

#: Joins a context's dataset and cell type: ``"dataset.celltype"``.
CONTEXT_SEP = "."

#: The columns :func:`read_design` returns, in order.
DESIGN_FIELDS = ("dataset", "celltype", "context", "perturbation", "is_control")


def context_key(dataset: str, celltype: str) -> str:
    """Return the ``"dataset.celltype"`` key of a context."""
    return f"{dataset}{CONTEXT_SEP}{celltype}"


def join_contexts(dataset: Any, celltype: Any) -> np.ndarray:
    """Return the ``"dataset.celltype"`` key of every cell.

    Args:
        dataset: Each cell's dataset name (strings: a Series or an array).
        celltype: Each cell's cell type (strings), as long as ``dataset``.

    Returns:
        An object array of the context keys, in the cells' order.
    """
    return np.asarray(dataset, dtype=object) + CONTEXT_SEP + np.asarray(celltype, dtype=object)


def _require_column(obs: pd.DataFrame, column: str, param: str, what: str) -> None:
    """Fail when the ``obs`` column configured as ``columns.<param>`` is missing."""
    if column not in obs.columns:
        available = [str(c) for c in obs.columns]
        raise InputError(
            f"obs has no column {column!r} (columns.{param}); expected it to hold {what}. "
            f"Available columns: {available}.{suggest(column, available)}"
        )


def read_design(obs: pd.DataFrame, columns: ColumnsParams) -> pd.DataFrame:
    """Read each cell's design (dataset, cell type, context, perturbation) from ``obs``.

    Values are read as strings (a missing value becomes ``"nan"``: callers that must refuse
    missing values check ``obs`` themselves). Without ``columns.dataset_col`` every cell
    belongs to the dataset ``columns.dataset_name``. A cell is a control when its
    perturbation label, as a string, equals ``columns.control_label``; whether any control
    occurs is left to the caller.

    Args:
        obs: Cell metadata (``adata.obs``), one row per cell.
        columns: Where the design lives in ``obs``: ``pert_col``, ``celltype_col``,
            ``dataset_col`` (or ``None``) with ``dataset_name``, and ``control_label``.

    Returns:
        A table indexed like ``obs`` with the columns of :data:`DESIGN_FIELDS`: ``dataset``,
        ``celltype``, ``context`` (``"dataset.celltype"``) and ``perturbation`` as strings
        (object dtype), and ``is_control`` as bool.

    Raises:
        InputError: A configured column (``columns.pert_col``, ``columns.celltype_col`` or
            ``columns.dataset_col``) is missing from ``obs``; the message names the column,
            its parameter and what it should hold, and lists the available columns.
    """
    _require_column(obs, columns.pert_col, "pert_col", "each cell's perturbation label")
    _require_column(obs, columns.celltype_col, "celltype_col", "each cell's cell type")
    if columns.dataset_col is not None:
        _require_column(obs, columns.dataset_col, "dataset_col", "each cell's dataset name")
        dataset = obs[columns.dataset_col].astype(str).to_numpy()
    else:
        dataset = np.full(len(obs), columns.dataset_name, dtype=object)
    celltype = obs[columns.celltype_col].astype(str).to_numpy()
    perturbation = obs[columns.pert_col].astype(str).to_numpy()
    return pd.DataFrame(
        {
            "dataset": dataset,
            "celltype": celltype,
            "context": join_contexts(dataset, celltype),
            "perturbation": perturbation,
            "is_control": perturbation == columns.control_label,
        },
        index=obs.index,
    )
