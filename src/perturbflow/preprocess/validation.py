"""Checks that run on a raw screen before any long work.

Every failure raises :class:`~perturbflow.exceptions.InputError` whose message begins
with the ``source`` name (usually the file path) and says what was expected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.design import read_design
from perturbflow.exceptions import InputError, closest, suggest
from perturbflow.params import ColumnsParams

logger = logging.getLogger(__name__)

ExpressionKind = Literal["counts", "log1p", "other"]

#: Integer-valued data whose largest sampled value exceeds this are raw counts.
COUNTS_MIN_MAX = 20.0
#: Non-integer, non-negative data whose largest sampled value is at most this are log1p.
LOG1P_MAX = 15.0
#: Rows sampled by :func:`detect_expression_kind`.
SAMPLE_ROWS = 2000


def detect_expression_kind(
    X: Any, *, n_rows: int = SAMPLE_ROWS, seed: int = 0
) -> Literal["counts", "log1p", "other"]:
    """Guess whether a matrix holds raw counts, log1p-normalised values or something else.

    The rule looks at the non-zero values of up to ``n_rows`` randomly chosen rows (a
    fixed seed, so the answer is reproducible; sorted files often start with empty
    rows, hence no "first rows" shortcut):

    * ``"counts"``: every sampled value is an integer and the largest exceeds
      :data:`COUNTS_MIN_MAX` (20). log1p values are never integers (``log1p(x) > 0``
      is irrational for integer ``x``), so integers mean counts; the maximum guards
      against binary or tiny matrices, which stay ``"other"``.
    * ``"log1p"``: some value is not an integer, none is negative and the largest is
      at most :data:`LOG1P_MAX` (15, i.e. ``log1p`` of ~3.3 million; cell-load uses
      the same bound).
    * ``"other"``: anything else (negative values, scaled data, normalised but not
      logged values, an empty or all-zero sample).

    Args:
        X: Dense array or scipy sparse matrix (cells x genes).
        n_rows: How many rows to sample.
        seed: Seed of the row sample.

    Returns:
        ``"counts"``, ``"log1p"`` or ``"other"``.
    """
    n_obs = X.shape[0]
    if n_obs == 0 or X.shape[1] == 0:
        return "other"
    rows = sample_rows(n_obs, n_rows=n_rows, seed=seed)
    if sp.issparse(X):
        values = np.asarray(X[rows].data)
    else:
        values = np.asarray(X[rows]).ravel()
    values = values[(values != 0) & np.isfinite(values)]
    if values.size == 0:
        return "other"
    vmax = float(values.max())
    if float(values.min()) < 0:
        return "other"
    if np.all(values == np.round(values)):
        return "counts" if vmax > COUNTS_MIN_MAX else "other"
    return "log1p" if vmax <= LOG1P_MAX else "other"


def context_labels(obs: pd.DataFrame, columns: ColumnsParams) -> pd.Series:
    """Return each cell's context key ``"dataset.celltype"`` (as in STATE's TOML files).

    The dataset comes from ``columns.dataset_col`` when set, else it is
    ``columns.dataset_name`` for every cell (:func:`~perturbflow.design.read_design`).
    """
    return read_design(obs, columns)["context"]


def require_columns(
    obs: pd.DataFrame, names: Iterable[tuple[str, str | None]], *, source: str
) -> None:
    """Fail when a configured ``obs`` column is missing.

    Args:
        obs: The ``obs`` table.
        names: ``(parameter key, column)`` pairs, e.g. ``("columns.pert_col", "gene")``;
            ``None`` columns are skipped.
        source: Name of the input, first word of the message.

    Raises:
        InputError: Naming the parameter, the available columns and the closest one.
    """
    available = [str(c) for c in obs.columns]
    for param, column in names:
        if column is not None and column not in obs.columns:
            raise InputError(
                f"{source}: obs column {column!r} ({param}) is missing. "
                f"Available columns: {available}.{suggest(column, available)}"
            )


def value_counts(X: Any) -> tuple[int, int, int, int]:
    """NaN, inf and negative counts among the stored values of ``X``, and how many there are.

    Only the stored values of a sparse matrix are read; summed over blocks of rows, the
    counts are those of the whole matrix.
    """
    values = X.data if sp.issparse(X) else np.asarray(X)
    return (
        int(np.isnan(values).sum()),
        int(np.isinf(values).sum()),
        int((values < 0).sum()),
        int(values.size),
    )


def check_value_counts(counts: tuple[int, int, int, int], *, source: str, what: str = "X") -> None:
    """Fail when :func:`value_counts` found NaN, inf or negative values.

    Raises:
        InputError: Naming how many of each, of how many stored values.
    """
    n_nan, n_inf, n_neg, size = counts
    problems = []
    if n_nan:
        problems.append(f"{n_nan:,} NaN")
    if n_inf:
        problems.append(f"{n_inf:,} inf")
    if n_neg:
        problems.append(f"{n_neg:,} negative")
    if problems:
        raise InputError(
            f"{source}: {what} holds {', '.join(problems)} value(s) (of {size:,} stored "
            "values); expression must be finite and non-negative (raw counts or log1p). "
            "Fix or drop those cells/genes before preprocessing."
        )


def _check_values(X: Any, *, source: str, what: str = "X") -> None:
    check_value_counts(value_counts(X), source=source, what=what)


def sample_rows(n_obs: int, *, n_rows: int = SAMPLE_ROWS, seed: int = 0) -> np.ndarray:
    """The rows :func:`detect_expression_kind` samples (sorted), for a matrix read by rows."""
    if n_obs <= n_rows:
        return np.arange(n_obs)
    return np.sort(np.random.default_rng(seed).choice(n_obs, size=n_rows, replace=False))


def _resolve_kind(detected: str, expected_input: str, *, source: str, warnings: list[str]) -> str:
    if expected_input not in ("auto", "counts", "log1p"):
        raise InputError(
            f"{source}: expected_input={expected_input!r} is not one of 'auto', 'counts', "
            f"'log1p'.{suggest(expected_input, ['auto', 'counts', 'log1p'])}"
        )
    rules = (
        f"(integer values with max > {COUNTS_MIN_MAX:g} = counts; "
        f"non-integer values in [0, {LOG1P_MAX:g}] = log1p)"
    )
    if expected_input == "auto":
        if detected == "other":
            raise InputError(
                f"{source}: cannot tell whether X holds raw counts or log1p values {rules}. "
                "Set preprocessing.expected_input to 'counts' or 'log1p'."
            )
        return detected
    if detected == "other":
        message = (
            f"X does not look like {expected_input} {rules}; using it as "
            f"expected_input={expected_input!r} as configured"
        )
        warnings.append(message)
        logger.warning("%s: %s", source, message)
        return expected_input
    if detected != expected_input:
        hint = (
            "normalised (normalize_total + log1p)"
            if detected == "counts"
            else "used as is (no normalisation)"
        )
        raise InputError(
            f"{source}: preprocessing.expected_input is {expected_input!r} but X looks like "
            f"{'raw counts' if detected == 'counts' else 'log1p values'} {rules}. "
            f"Set expected_input to {detected!r} (or 'auto') so X is {hint}, or point the "
            f"project at a file holding {expected_input}."
        )
    return detected


def validate_adata(
    adata: ad.AnnData,
    columns: ColumnsParams,
    *,
    expected_input: str = "auto",
    source: str = "<adata>",
) -> dict[str, Any]:
    """Check a raw screen before preprocessing; fail fast with a precise message.

    Checks, in order: the AnnData is not empty; the configured ``obs`` columns exist;
    every cell has a perturbation label; the control label occurs in the perturbation
    column; gene names are unique; ``X`` holds no NaN, inf or negative value (only the
    stored values of a sparse matrix are read); what ``X`` holds (see
    :func:`detect_expression_kind`) agrees with ``expected_input``. A context without
    control cells is not an error: it is reported in ``warnings`` (its knockdown ratios
    then use the control cells of all contexts).

    Args:
        adata: The raw screen; not modified.
        columns: Where the design lives in ``obs``.
        expected_input: ``"auto"``, ``"counts"`` or ``"log1p"``.
        source: Name of the input (e.g. its path); every message starts with it.

    Returns:
        A summary: ``source``, ``n_obs``, ``n_vars``, ``detected_kind`` (what the data
        look like), ``kind`` (what preprocessing will treat them as),
        ``n_perturbations`` (control excluded), ``n_control_cells``, ``contexts``
        (sorted ``"dataset.celltype"`` keys) and ``warnings`` (list of strings).

    Raises:
        InputError: On any of the problems above.
    """
    validate_design(adata.obs, adata.var_names, columns, source=source)
    _check_values(adata.X, source=source)
    return design_summary(
        adata.obs,
        columns,
        n_vars=adata.n_vars,
        detected=detect_expression_kind(adata.X),
        expected_input=expected_input,
        source=source,
    )


def validate_design(
    obs: pd.DataFrame, var_names: pd.Index, columns: ColumnsParams, *, source: str
) -> None:
    """The checks of :func:`validate_adata` that read ``obs`` and ``var_names`` only.

    Raises:
        InputError: Empty data, a missing column, unlabelled cells, an absent control
            label or duplicated gene names.
    """
    n_obs, n_vars = len(obs), len(var_names)
    if n_obs == 0 or n_vars == 0:
        raise InputError(f"{source}: the AnnData is empty ({n_obs} cells x {n_vars} genes).")
    require_columns(
        obs,
        [
            ("columns.pert_col", columns.pert_col),
            ("columns.celltype_col", columns.celltype_col),
            ("columns.batch_col", columns.batch_col),
            ("columns.dataset_col", columns.dataset_col),
        ],
        source=source,
    )
    perts = obs[columns.pert_col]
    n_missing = int(perts.isna().sum())
    if n_missing:
        raise InputError(
            f"{source}: {n_missing:,} cells have no label in obs column {columns.pert_col!r} "
            "(columns.pert_col); label them (e.g. as controls) or drop them."
        )
    labels = pd.Index(pd.unique(perts.astype(str)))
    control = columns.control_label
    if control not in labels:
        near = closest(control, labels, n=5) or sorted(labels)[:5]
        raise InputError(
            f"{source}: control label {control!r} (columns.control_label) does not occur in "
            f"obs column {columns.pert_col!r}, which has {len(labels):,} distinct values; "
            f"closest: {near}."
        )
    var_names = pd.Index(var_names)
    if not var_names.is_unique:
        dup = var_names[var_names.duplicated()].unique()
        raise InputError(
            f"{source}: {len(dup):,} gene names occur more than once in var_names "
            f"(e.g. {list(dup[:5])}); make them unique (adata.var_names_make_unique()) or "
            "sum the duplicated genes."
        )


def design_summary(
    obs: pd.DataFrame,
    columns: ColumnsParams,
    *,
    n_vars: int,
    detected: str,
    expected_input: str,
    source: str,
) -> dict[str, Any]:
    """What the data are treated as, and the summary :func:`validate_adata` returns.

    Raises:
        InputError: What ``X`` holds disagrees with ``expected_input``.
    """
    design = read_design(obs, columns)
    labels = pd.Index(pd.unique(design["perturbation"]))
    control = columns.control_label
    warnings: list[str] = []
    kind = _resolve_kind(detected, expected_input, source=source, warnings=warnings)

    is_control, contexts = design["is_control"].to_numpy(), design["context"]
    with_controls = set(contexts[is_control].unique())
    all_contexts = sorted(contexts.unique())
    for ctx in all_contexts:
        if ctx not in with_controls:
            message = (
                f"context {ctx!r} has no control cells ({control!r}); its knockdown ratios "
                "use the control cells of all contexts"
            )
            warnings.append(message)
            logger.warning("%s: %s", source, message)
    summary = {
        "source": source,
        "n_obs": int(len(obs)),
        "n_vars": int(n_vars),
        "detected_kind": detected,
        "kind": kind,
        "n_perturbations": int(len(labels) - 1),
        "n_control_cells": int(is_control.sum()),
        "contexts": all_contexts,
        "warnings": warnings,
    }
    logger.info(
        "%s: %d cells x %d genes, X looks like %s, %d perturbations in %d context(s)",
        source,
        len(obs),
        n_vars,
        detected,
        summary["n_perturbations"],
        len(all_contexts),
    )
    return summary
