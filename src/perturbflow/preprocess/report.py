"""The JSON-serialisable preprocessing report and its flat table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

FRAME_COLUMNS = [
    "perturbation",
    "context",
    "is_control",
    "targets",
    "measured",
    "residual_expression",
    "n_cells_before",
    "n_cells_after",
    "n_cells_dropped",
    "kept",
    "reason",
    "cells_dropped_reason",
]


def jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and non-finite floats into plain JSON values.

    NaN and infinities become ``None`` (JSON has no NaN); mapping keys become strings.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray | pd.Index):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell_reason(row: Mapping[str, Any], cell_residual: float) -> str:
    if row["n_cells_before"] == row["n_cells_after"]:
        return ""
    if row["n_cells_after"] == 0:
        return "perturbation dropped"
    return f"target residual in the cell >= {cell_residual:.2f}"


def build_report(
    *,
    source: str,
    summary: Mapping[str, Any],
    normalisation: Mapping[str, Any],
    knockdown: Mapping[str, Any],
    knockdown_table: pd.DataFrame,
    controls: pd.Series,
    control_label: str,
    hvg: Mapping[str, Any],
    final_shape: tuple[int, int],
) -> dict[str, Any]:
    """Assemble the report of :func:`~perturbflow.preprocess.preprocess_adata`.

    Args:
        source: Name of the input.
        summary: What :func:`~perturbflow.preprocess.validate_adata` returned.
        normalisation: ``uns["perturbflow"]["normalisation"]``.
        knockdown: ``uns["perturbflow"]["knockdown"]`` (thresholds, scale).
        knockdown_table: The per-(perturbation, context) table of the filter.
        controls: Control cells per context (index: context).
        control_label: The control label.
        hvg: ``uns["perturbflow"]["hvg"]``.
        final_shape: Shape of the processed AnnData.

    Returns:
        A dict of plain JSON values (see :func:`report_to_frame` for the flat view).
    """
    table = knockdown_table
    cell_residual = float(knockdown["cell_residual_expression"])
    kept_mask = table["kept"].to_numpy(dtype=bool)
    dropped_pairs, kept_pairs = table[~kept_mask], table[kept_mask]
    by_reason: dict[str, int] = {}
    if len(dropped_pairs):  # reason without its numbers, e.g. "weak knockdown"
        category = dropped_pairs["reason"].str.replace(r" \(.*\)$", "", regex=True).to_numpy()
        for reason, n in dropped_pairs["n_cells_before"].groupby(category).sum().items():
            by_reason[str(reason)] = int(n)
    n_cell_level = int((kept_pairs["n_cells_before"] - kept_pairs["n_cells_after"]).sum())
    if n_cell_level:
        by_reason[f"target residual in the cell >= {cell_residual:.2f}"] = n_cell_level
    labels_in = set(table["perturbation"])
    labels_kept = set(kept_pairs["perturbation"])
    report = {
        "source": source,
        "input_shape": [summary["n_obs"], summary["n_vars"]],
        "detected_kind": summary["detected_kind"],
        "treated_as": summary["kind"],
        "validation_warnings": list(summary["warnings"]),
        "normalisation": dict(normalisation),
        "knockdown": {**dict(knockdown), "table": table.to_dict(orient="records")},
        "hvg": dict(hvg),
        "control_label": control_label,
        "controls": [{"context": c, "n_cells": int(n)} for c, n in controls.items()],
        "cells": {
            "input": summary["n_obs"],
            "kept": int(final_shape[0]),
            "dropped": int(summary["n_obs"] - final_shape[0]),
            "dropped_by_reason": by_reason,
        },
        "perturbations": {
            "input": len(labels_in),
            "kept": len(labels_kept),
            "dropped": len(labels_in - labels_kept),
            "pairs_dropped": [
                {"perturbation": r.perturbation, "context": r.context, "reason": r.reason}
                for r in dropped_pairs.itertuples()
            ],
        },
        "final_shape": [int(final_shape[0]), int(final_shape[1])],
    }
    return jsonable(report)


def report_to_frame(report: Mapping[str, Any]) -> pd.DataFrame:
    """Flatten a preprocessing report: one row per (perturbation, context), controls first.

    Args:
        report: What :func:`~perturbflow.preprocess.preprocess_adata` returned.

    Returns:
        Columns ``perturbation``, ``context``, ``is_control``, ``targets``, ``measured``,
        ``residual_expression``, ``n_cells_before``, ``n_cells_after``,
        ``n_cells_dropped``, ``kept``, ``reason`` (why the perturbation was kept or
        dropped) and ``cells_dropped_reason`` (why cells of a kept one were dropped).
    """
    controls = pd.DataFrame(
        [
            {
                "perturbation": report["control_label"],
                "context": c["context"],
                "is_control": True,
                "targets": "",
                "measured": False,
                "residual_expression": np.nan,
                "n_cells_before": c["n_cells"],
                "n_cells_after": c["n_cells"],
                "kept": True,
                "reason": "control (always kept)",
            }
            for c in report["controls"]
        ]
    )
    perts = pd.DataFrame.from_records(report["knockdown"]["table"])
    if len(perts):
        perts = perts.assign(is_control=False)
        perts["residual_expression"] = perts["residual_expression"].astype(float)
    frame = pd.concat([f for f in (controls, perts) if len(f)], ignore_index=True)
    frame["n_cells_dropped"] = frame["n_cells_before"] - frame["n_cells_after"]
    cell_residual = float(report["knockdown"]["cell_residual_expression"])
    frame["cells_dropped_reason"] = [
        _cell_reason(row, cell_residual) for row in frame.to_dict(orient="records")
    ]
    return frame[FRAME_COLUMNS]
