"""Nodes of the ``adaptation`` pipeline: thin wrappers over :mod:`perturbflow.adaptation`.

The trained run comes from the ``st_models`` store (``adaptation.run`` names it), the fitted
shift goes to the ``mmd_shifts`` store (``adaptation.name``) and the prediction node reads
it back from there, checked against the run: a shift fitted for another run fails.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from perturbflow.adaptation import (
    AdaptationParams,
    MMDShift,
    control_expression,
    fit_shift,
    plot_mmd_curve,
    predict_adapted,
    read_cells,
    read_perturbation_list,
    select_cells,
    shift_metadata,
    source_embeddings,
)
from perturbflow.adaptation.io import TargetCells, resolve_files
from perturbflow.datasets.h5ad_cells import H5adCells, read_h5ad_cells
from perturbflow.datasets.model_store import StoredModels
from perturbflow.exceptions import InputError
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.params import ColumnsParams

logger = logging.getLogger(__name__)


def _control_label(params: AdaptationParams, columns: ColumnsParams) -> str:
    return params.control_label or columns.control_label


def _run(st_models: StoredModels, params: AdaptationParams) -> TrainedRun:
    run = st_models.named_by(params.run, "adaptation.run")
    return (
        run if params.device == "cpu" else dataclasses.replace(run, net=run.net.to(params.device))
    )


def embed_source_controls(
    st_models: StoredModels,
    preprocessed_adata: H5adCells,
    params: AdaptationParams,
    columns: ColumnsParams,
) -> dict:
    """Basal-encoder embeddings of the source files' control cells.

    The source is ``adaptation.source.files``, or the preprocessed screen when that is
    ``None``.

    Returns:
        ``{"embeddings": cells x width array, "files": per-file counts}`` (in memory).
    """
    run = _run(st_models, params)
    src = params.source
    result = source_embeddings(
        [str(preprocessed_adata.filename)] if src.files is None else src.files,
        run,
        pert_col=columns.pert_col,
        control_label=_control_label(params, columns),
        celltype_col=columns.celltype_col,
        celltypes=src.celltypes,
        max_cells_per_file=src.max_cells_per_file,
        chunk_size=params.chunk_size,
        seed=params.fit.seed,
        device=params.device,
    )
    return {"embeddings": result.embeddings, "files": result.files}


def read_target(
    preprocessed_adata: H5adCells, params: AdaptationParams, columns: ColumnsParams
) -> TargetCells:
    """The target context's cells (controls and any perturbed cells), in memory.

    The target is ``adaptation.target.file``, or the preprocessed screen when that is
    ``None``.
    """
    if params.target.file is None:
        path, obs = Path(preprocessed_adata.filename), preprocessed_adata.obs
    else:
        paths = resolve_files(params.target.file, what="target")
        if len(paths) != 1:
            raise InputError(
                f"adaptation.target.file must name one file; {params.target.file!r} gives "
                f"{[str(p) for p in paths]}."
            )
        path = paths[0]
        obs = read_h5ad_cells(path).obs  # obs only: the cells are read by rows below
    celltypes = None if params.target.celltype is None else [params.target.celltype]
    rows = select_cells(
        obs,
        source=str(path),
        pert_col=columns.pert_col,
        control_label=None,
        celltype_col=columns.celltype_col,
        celltypes=celltypes,
    )
    return TargetCells(read_cells(path, rows), str(path))


def _target_controls(target: TargetCells, columns: ColumnsParams, label: str) -> ad.AnnData:
    rows = select_cells(
        target.cells.obs,
        source=target.file,
        pert_col=columns.pert_col,
        control_label=label,
        celltype_col=None,
        celltypes=None,
    )
    return target.cells[rows]


def fit_target_shift(
    st_models: StoredModels,
    source: dict,
    target: TargetCells,
    params: AdaptationParams,
    columns: ColumnsParams,
) -> tuple[dict[str, MMDShift], dict, pd.DataFrame]:
    """Fit the shift on the target's control expression.

    Returns:
        ``{adaptation.name: the shift}`` for the ``mmd_shifts`` store, its metadata
        (``adaptation_summary``) and the MMD curve.
    """
    run = _run(st_models, params)
    label = _control_label(params, columns)
    controls = control_expression(_target_controls(target, columns, label), run, source=target.file)
    fit = fit_shift(
        run.net.basal_encoder,
        controls,
        np.asarray(source["embeddings"]),
        params.fit,
        device=params.device,
    )
    meta = shift_metadata(
        fit,
        run,
        params.fit,
        name=params.name,
        source_files=source["files"],
        source_celltypes=params.source.celltypes,
        target_file=target.file,
        target_celltype=params.target.celltype,
    )
    return {params.name: MMDShift(fit.shift, meta)}, meta, fit.curve


def plot_shift_curve(curve: pd.DataFrame, params: AdaptationParams) -> Figure:
    """The MMD curve as a matplotlib figure (the catalog writes the PNG)."""
    return plot_mmd_curve(curve, title=f"MMD shift {params.name}")


def predict_target(
    st_models: StoredModels,
    mmd_shifts: StoredModels,
    target: TargetCells,
    params: AdaptationParams,
    columns: ColumnsParams,
) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """Predict the requested perturbations from the shifted target controls.

    Returns:
        The cell-level predictions (cell-eval's form), the per-perturbation means and how
        each perturbation was encoded.
    """
    run = st_models.named_by(params.run, "adaptation.run")
    shift = mmd_shifts.named_by(params.name, "adaptation.name").check_run(run)
    label = _control_label(params, columns)
    perts = None
    if params.perturbations.file is not None:
        perts = read_perturbation_list(
            params.perturbations.file,
            column=params.perturbations.column or columns.pert_col,
            control_label=label,
        )
    design = dataclasses.replace(columns, control_label=label)
    out = predict_adapted(
        run,
        target.cells,
        design,
        shift,
        perturbations=perts,
        cells_per_perturbation=params.predict.cells_per_perturbation,
        allow_unknown=params.predict.allow_unknown,
        map_back=params.predict.map_back,
        seed=params.predict.seed,
        source=target.file,
    )
    return out.cells, out.means, out.sources
