"""Nodes of the ``adaptation`` pipeline: thin wrappers over :mod:`perturbflow.adaptation`.

Like the ``training`` pipeline's run directory, the adapter directory is written by the
library (atomically: ``shift.pt`` + ``adapter.json``) and its summary goes to the catalog;
the prediction node reads the adapter back from disk against the run, so an adapter
fitted for another run fails there.
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
    adapter_metadata,
    control_expression,
    fit_shift,
    load_adapter,
    plot_mmd_curve,
    predict_adapted,
    read_cells,
    read_perturbation_list,
    save_adapter,
    select_cells,
    source_embeddings,
)
from perturbflow.adaptation.io import resolve_files
from perturbflow.datasets.h5ad_cells import read_h5ad_cells
from perturbflow.exceptions import InputError
from perturbflow.models.runs.run_dir import load_run
from perturbflow.params import ColumnsParams

logger = logging.getLogger(__name__)


def _control_label(params: AdaptationParams, columns: ColumnsParams) -> str:
    return params.control_label or columns.control_label


def embed_source_controls(params: AdaptationParams, columns: ColumnsParams) -> dict:
    """Basal-encoder embeddings of the source files' control cells.

    Returns:
        ``{"embeddings": cells x width array, "files": per-file counts}`` (in memory).
    """
    run = load_run(params.run_dir, device=params.device)
    src = params.source
    result = source_embeddings(
        src.files,
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


def read_target(params: AdaptationParams, columns: ColumnsParams) -> ad.AnnData:
    """The target context's cells (controls and any perturbed cells), in memory."""
    path = resolve_files(params.target.file, what="target")
    if len(path) != 1:
        raise InputError(
            f"adaptation.target.file must name one file; {params.target.file!r} gives "
            f"{[str(p) for p in path]}."
        )
    obs = read_h5ad_cells(path[0]).obs  # obs only: the cells are read by rows below
    celltypes = None if params.target.celltype is None else [params.target.celltype]
    rows = select_cells(
        obs,
        source=str(path[0]),
        pert_col=columns.pert_col,
        control_label=None,
        celltype_col=columns.celltype_col,
        celltypes=celltypes,
    )
    target = read_cells(path[0], rows)
    target.uns["perturbflow_source_file"] = str(path[0])
    return target


def _target_controls(target: ad.AnnData, columns: ColumnsParams, label: str) -> ad.AnnData:
    source = str(target.uns.get("perturbflow_source_file", "target"))
    rows = select_cells(
        target.obs,
        source=source,
        pert_col=columns.pert_col,
        control_label=label,
        celltype_col=None,
        celltypes=None,
    )
    return target[rows]


def fit_adapter(
    source: dict,
    target: ad.AnnData,
    params: AdaptationParams,
    columns: ColumnsParams,
) -> tuple[dict, pd.DataFrame]:
    """Fit the shift on the target's control expression; write the adapter directory.

    Returns:
        The adapter's metadata (``adaptation_summary``) and the MMD curve.
    """
    run = load_run(params.run_dir, device=params.device)
    label = _control_label(params, columns)
    source_name = str(target.uns.get("perturbflow_source_file", "target"))
    controls = control_expression(_target_controls(target, columns, label), run, source=source_name)
    fit = fit_shift(
        run.net.basal_encoder,
        controls,
        np.asarray(source["embeddings"]),
        params.fit,
        device=params.device,
    )
    meta = adapter_metadata(
        fit,
        run,
        params.fit,
        adapter_dir=params.adapter_dir,
        source_files=source["files"],
        source_celltypes=params.source.celltypes,
        target_file=source_name,
        target_celltype=params.target.celltype,
    )
    save_adapter(params.adapter_dir, fit, meta)
    return meta, fit.curve


def plot_adapter_curve(curve: pd.DataFrame, params: AdaptationParams) -> Figure:
    """The MMD curve as a matplotlib figure (the catalog writes the PNG)."""
    return plot_mmd_curve(curve, title=f"Adapter {Path(params.adapter_dir).name}")


def predict_target(
    adaptation_summary: dict,
    target: ad.AnnData,
    params: AdaptationParams,
    columns: ColumnsParams,
) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """Predict the requested perturbations from the adapted target controls.

    Returns:
        The cell-level predictions (cell-eval's form), the per-perturbation means and how
        each perturbation was encoded.
    """
    run = load_run(params.run_dir)
    adapter, _ = load_adapter(adaptation_summary["adapter_dir"], run)
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
        target,
        design,
        adapter,
        perturbations=perts,
        cells_per_perturbation=params.predict.cells_per_perturbation,
        allow_unknown=params.predict.allow_unknown,
        map_back=params.predict.map_back,
        seed=params.predict.seed,
        source=str(target.uns.get("perturbflow_source_file", "target")),
    )
    return out.cells, out.means, out.sources
