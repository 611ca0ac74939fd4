"""Preprocessing of perturbation screens, scanpy-style (no Kedro imports).

``adata`` comes first, options are keyword-only and the input is never modified: every
function returns a new AnnData.

* :func:`validate_adata`, :func:`detect_expression_kind`: fail fast on bad input.
* :func:`normalize_log1p`: ``normalize_total`` + ``log1p`` when ``X`` holds counts.
* :func:`filter_on_target_knockdown`: cell-load's on-target knockdown filter.
* :func:`select_hvg`: highly variable genes and the dense ``obsm["X_hvg"]``.
* :func:`merge_datasets`: several screens on their shared genes.
* :func:`preprocess_adata`, :func:`report_to_frame`: all of it, with a report.
"""

from perturbflow.preprocess.api import preprocess_adata
from perturbflow.preprocess.hvg import select_hvg
from perturbflow.preprocess.knockdown import filter_on_target_knockdown
from perturbflow.preprocess.merge import merge_datasets
from perturbflow.preprocess.normalize import normalize_log1p
from perturbflow.preprocess.report import report_to_frame
from perturbflow.preprocess.validation import (
    context_labels,
    detect_expression_kind,
    validate_adata,
)

__all__ = [
    "context_labels",
    "detect_expression_kind",
    "filter_on_target_knockdown",
    "merge_datasets",
    "normalize_log1p",
    "preprocess_adata",
    "report_to_frame",
    "select_hvg",
    "validate_adata",
]
