"""The whole preprocessing in one call: validate, normalise, filter knockdowns, select HVGs."""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad

from perturbflow.design import read_design
from perturbflow.exceptions import InputError
from perturbflow.params import ColumnsParams, PreprocessingParams
from perturbflow.preprocess.hvg import select_hvg
from perturbflow.preprocess.knockdown import filter_on_target_knockdown, knockdown_settings
from perturbflow.preprocess.normalize import UNS_KEY, normalize_log1p
from perturbflow.preprocess.report import build_report
from perturbflow.preprocess.validation import validate_adata

logger = logging.getLogger(__name__)


def check_params(params: PreprocessingParams, *, source: str) -> None:
    """Fail on out-of-range preprocessing parameters, naming each."""
    kd = params.knockdown
    problems = []
    if params.n_top_genes < 1:
        problems.append(f"n_top_genes={params.n_top_genes} must be at least 1")
    if params.target_sum is not None and not params.target_sum > 0:
        problems.append(f"target_sum={params.target_sum} must be positive or null")
    if not 0 < kd.residual_expression <= 1:
        problems.append(f"knockdown.residual_expression={kd.residual_expression} not in (0, 1]")
    if not 0 < kd.cell_residual_expression <= 1:
        problems.append(
            f"knockdown.cell_residual_expression={kd.cell_residual_expression} not in (0, 1]"
        )
    if kd.min_cells < 0:
        problems.append(f"knockdown.min_cells={kd.min_cells} must be >= 0")
    if problems:
        raise InputError(f"{source}: bad preprocessing parameters: {'; '.join(problems)}.")


def preprocess_adata(
    adata: ad.AnnData,
    columns: ColumnsParams,
    params: PreprocessingParams,
    *,
    source: str = "<adata>",
) -> tuple[ad.AnnData, list[str], dict[str, Any]]:
    """Validate, normalise, filter on-target knockdown and select HVGs (in that order).

    Every check (columns, control label, values, counts vs log1p, parameters) runs
    before any copy of the matrix is made. HVGs are selected after the knockdown filter,
    on the cells that remain. With ``knockdown.enabled: false`` no cell is dropped but
    the knockdown ratios are still computed and reported.

    Args:
        adata: The raw screen; never modified.
        columns: Where the design lives in ``obs``.
        params: Normalisation, HVG and knockdown settings.
        source: Name of the input (e.g. its path); error messages start with it.

    Returns:
        The processed AnnData (log1p ``X``; raw counts in ``layers["counts"]`` when the
        input held counts; ``var["highly_variable"]``; ``obsm["X_hvg"]``; what was done
        in ``uns["perturbflow"]``), the ordered HVG list (columns of ``obsm["X_hvg"]``)
        and a JSON-serialisable report (see :func:`report_to_frame`).

    Raises:
        InputError: Bad data or parameters, before long work starts.
    """
    check_params(params, source=source)
    summary = validate_adata(adata, columns, expected_input=params.expected_input, source=source)
    knockdown = knockdown_settings(adata.obs.columns, params.knockdown, source=source)

    logger.info(
        "%s: normalising, filtering on-target knockdown and selecting %d HVGs...",
        source,
        params.n_top_genes,
    )
    normalised = normalize_log1p(adata, target_sum=params.target_sum, kind=summary["kind"])
    filtered, kd_table = filter_on_target_knockdown(normalised, columns, knockdown, source=source)
    del normalised
    processed, hvg_genes = select_hvg(
        filtered,
        n_top_genes=params.n_top_genes,
        flavor=params.hvg_flavor,
        hvg_format=params.hvg_format,
    )
    del filtered

    design = read_design(processed.obs, columns)
    controls = design.loc[design["is_control"], "context"].value_counts().sort_index()
    uns = processed.uns[UNS_KEY]
    report = build_report(
        source=source,
        summary=summary,
        normalisation=uns["normalisation"],
        knockdown=uns["knockdown"],
        knockdown_table=kd_table,
        controls=controls,
        control_label=columns.control_label,
        hvg=uns["hvg"],
        final_shape=processed.shape,
    )
    logger.info(
        "%s: preprocessed %d x %d -> %d x %d; %d HVGs; %d perturbation(s) dropped",
        source,
        summary["n_obs"],
        summary["n_vars"],
        processed.n_obs,
        processed.n_vars,
        len(hvg_genes),
        report["perturbations"]["dropped"],
    )
    if report["perturbations"]["kept"] == 0 and report["perturbations"]["input"] > 0:
        logger.warning("%s: every perturbation was dropped by the knockdown filter", source)
    return processed, hvg_genes, report
