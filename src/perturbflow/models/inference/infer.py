"""``perturbflow infer``: predict the perturbations of any AnnData from its control cells.

:func:`infer` (:func:`infer_adata` with keywords) reads a user's AnnData in the model's genes
by name (:mod:`perturbflow.models.inference.gene_space`), checks every requested perturbation and
context, and NaN or inf values, before predicting (:mod:`perturbflow.models.inference.predict`), and
returns an AnnData that goes straight into ``cell-eval run`` against the input: control cells
included, every gene of the input in its order, ``var['predicted']`` marking the genes the
model predicted. ``per_batch`` predicts each plate from its own controls
(:mod:`perturbflow.models.inference.plates`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.design import read_design
from perturbflow.exceptions import InputError
from perturbflow.loading._messages import listed
from perturbflow.loading.categories import CategoryMap
from perturbflow.models.inference.gene_space import (
    aligned_matrix,
    check_finite,
    control_means,
    model_columns,
    prediction_origins,
    with_input_genes,
)
from perturbflow.models.inference.plates import infer_plates
from perturbflow.models.inference.predict import (
    CellPredictions,
    Key,
    Runs,
    as_runs,
    predict_ensemble,
)
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.params import ColumnsParams
from perturbflow.predictions import assemble_predictions
from perturbflow.splits.data import SplitCells

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferOptions:
    """How :func:`infer` predicts (the options of ``perturbflow infer``).

    Attributes:
        perturbations: Perturbation labels to predict in every context (default: every
            non-control label of the input).
        cells_per_perturbation: Cells predicted per (context, perturbation); default: as
            many as the real ones in that context, else the context's control count.
        control_mean: Start from the control mean per batch instead of control cells.
        allow_unknown: Predict perturbations the model knows nothing about.
        control_offset: ``subtract`` removes the model's own offset on each control
            sentence (:func:`predict_cells`), ``keep`` does not.
        per_batch: Predict per plate (``columns.batch_col``), each plate from its own
            controls (:func:`perturbflow.models.inference.plates.infer_plates`): the plates' own
            perturbations, or every requested one on every plate with controls.
        seed: Seed of the control sampling.
        input_map: Maps the aligned expression (cells x the model's genes) to what the
            model reads, e.g. an MMD shift (:mod:`perturbflow.adaptation`); the output's
            control cells stay the input's own.
        output_map: Maps predicted cells back before clipping (the shift's inverse).
    """

    perturbations: Sequence[str] | None = None
    cells_per_perturbation: int | None = None
    control_mean: bool = False
    allow_unknown: bool = False
    control_offset: Literal["keep", "subtract"] = "keep"
    per_batch: bool = False
    seed: int = 0
    input_map: Callable[[np.ndarray], np.ndarray] | None = None
    output_map: Callable[[np.ndarray], np.ndarray] | None = None

    def requested(self, control_label: str) -> list[str] | None:
        """The requested labels, in order, without repeats and without the control."""
        if self.perturbations is None:
            return None
        return [p for p in dict.fromkeys(self.perturbations) if p != control_label]


def infer_adata(
    run: Runs,
    adata: ad.AnnData,
    columns: ColumnsParams,
    *,
    perturbations: Sequence[str] | None = None,
    cells_per_perturbation: int | None = None,
    control_mean: bool = False,
    allow_unknown: bool = False,
    control_offset: Literal["keep", "subtract"] = "keep",
    per_batch: bool = False,
    seed: int = 0,
    source: str = "input",
    input_map: Callable[[np.ndarray], np.ndarray] | None = None,
    output_map: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """:func:`infer` with the options as keywords (the attributes of :class:`InferOptions`).

    Args:
        run: The trained run, or a seed ensemble's runs (their cells averaged).
        adata: Cells with the design columns; its control cells are the inputs.
        columns: Where the design lives in ``adata.obs``.
        perturbations: As :class:`InferOptions`, like every option below.
        cells_per_perturbation: See :class:`InferOptions`.
        control_mean: See :class:`InferOptions`.
        allow_unknown: See :class:`InferOptions`.
        control_offset: See :class:`InferOptions`.
        per_batch: See :class:`InferOptions`.
        seed: See :class:`InferOptions`.
        source: How to name the input in messages (its path).
        input_map: See :class:`InferOptions`.
        output_map: See :class:`InferOptions`.

    Returns:
        As :func:`infer`.

    Raises:
        InputError: As :func:`infer`.
    """
    options = InferOptions(
        perturbations=perturbations,
        cells_per_perturbation=cells_per_perturbation,
        control_mean=control_mean,
        allow_unknown=allow_unknown,
        control_offset=control_offset,
        per_batch=per_batch,
        seed=seed,
        input_map=input_map,
        output_map=output_map,
    )
    return infer(run, adata, columns, options, source=source)


def infer(
    run: Runs,
    adata: ad.AnnData,
    columns: ColumnsParams,
    options: InferOptions,
    *,
    source: str = "input",
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Predict perturbations in every context of a user's AnnData (``perturbflow infer``).

    Args:
        run: The trained run, or the runs of a seed ensemble: each predicts from the same
            control cells and their cells are averaged
            (:func:`~perturbflow.models.inference.predict.predict_ensemble`); the first
            run's genes, maps and configuration are what the input is checked against.
        adata: Cells with the design columns; its control cells are the inputs.
        columns: Where the design lives in ``adata.obs``.
        options: What to predict and how.
        source: How to name the input in messages (its path).

    Returns:
        The predictions (cell-eval's form: each context's control cells, then the predicted
        cells) and a table of how each perturbation was encoded. The predictions carry
        every gene of ``adata`` in its order, with ``adata.var`` and a bool
        ``var['predicted']``: the model's genes are predicted, the others are those of the
        control cells each prediction started from (their mean, from a control mean), so
        the output goes straight into ``cell-eval run`` against ``adata``. An
        ``embedding`` model's output stays in its embedding (every column predicted).

    Raises:
        InputError: A missing column or control label, missing genes, NaN or inf values,
            an unknown perturbation or a context without controls: all before any
            prediction.
    """
    runs = as_runs(run)
    run = runs[0]
    data = _input_data(run, adata, columns, source)
    gene_space = run.config["training"]["model"]["output_space"] != "embedding"
    if gene_space:
        _check_other_genes(adata, run, source)
    if options.per_batch:
        out, sources = _infer_per_batch(runs, data, adata.obs, columns, options, source)
        starts, groups = None, adata.obs[columns.batch_col].astype(str).to_numpy()
    else:
        out, predicted, groups = _infer_contexts(runs, data, adata.obs, columns, options, source)
        starts, sources = predicted.starts, predicted.sources()
    if not gene_space:
        out.var["predicted"] = True
        return out, sources
    origin, is_pred = prediction_origins(out.obs, data, columns, starts, groups, seed=options.seed)
    means = None
    if options.control_mean:
        means = control_means(adata.X, origin, is_pred, data, groups)
    return with_input_genes(out, adata, data.genes, origin, means), sources


def _input_data(
    run: TrainedRun, adata: ad.AnnData, columns: ColumnsParams, source: str
) -> SplitCells:
    """The input's design and its expression in the model's genes, checked.

    Raises:
        InputError: A missing column, no control cells, a context without controls, or
            what :func:`aligned_matrix` refuses.
    """
    obs = adata.obs
    try:
        design = read_design(obs, columns)
    except InputError as err:
        raise InputError(f"{source}: {err}") from err
    if columns.batch_col and columns.batch_col not in obs.columns:
        absent = [columns.batch_col]
        raise InputError(f"{source}: obs lacks column(s) {absent} (obs has {list(obs.columns)}).")
    if not design["is_control"].any():
        raise InputError(
            f"{source}: no cell has {columns.pert_col} == {columns.control_label!r}; the "
            "control cells are the inputs of a prediction."
        )
    X = aligned_matrix(adata, run, source=source)
    cells = design[["dataset", "celltype", "perturbation", "is_control"]].assign(
        split="test", context=design["context"]
    )
    cells.index = adata.obs_names.astype(str)
    data = SplitCells(X=X, genes=list(run.genes), cells=cells, split_name="infer")
    contexts = sorted(cells["context"].unique())
    without = [c for c in contexts if not len(data.control_rows(c))]
    if without:
        raise InputError(
            f"{source}: context(s) {listed(without)} have no control cells "
            f"({columns.pert_col} == {columns.control_label!r}); a prediction starts from them."
        )
    return data


def _check_other_genes(adata: ad.AnnData, run: TrainedRun, source: str) -> None:
    """Check the genes the model does not read (copied to the output) for NaN and inf."""
    names = adata.var_names.astype(str)
    other = np.setdiff1d(np.arange(adata.n_vars), model_columns(adata, run, source=source))
    if len(other):
        logger.info(
            "%s: %d genes the model does not predict are taken from the control cells.",
            source,
            len(other),
        )
        cells = adata.obs_names.astype(str)
        check_finite(
            adata.X, source=source, what="X", cells=cells, names=names[other], columns=other
        )


def _infer_per_batch(
    runs: list[TrainedRun],
    data: SplitCells,
    obs: pd.DataFrame,
    columns: ColumnsParams,
    options: InferOptions,
    source: str,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """``per_batch``: every plate from its own controls (the model's genes)."""
    if options.input_map is not None or options.output_map is not None:
        raise InputError("per_batch does not take an input_map / output_map (an MMD shift).")
    if not columns.batch_col:
        raise InputError(f"{source}: per-batch prediction needs the batch column (--batch-col).")
    return infer_plates(
        runs,
        data,
        obs[columns.batch_col].astype(str).to_numpy(),
        columns,
        perturbations=options.requested(columns.control_label),
        cells_per_perturbation=options.cells_per_perturbation,
        seed=options.seed,
        control_mean=options.control_mean,
        allow_unknown=options.allow_unknown,
        control_offset=options.control_offset,
    )


def _infer_contexts(
    runs: list[TrainedRun],
    data: SplitCells,
    obs: pd.DataFrame,
    columns: ColumnsParams,
    options: InferOptions,
    source: str,
) -> tuple[ad.AnnData, CellPredictions, np.ndarray | None]:
    """Every requested perturbation in every context (the model's genes).

    Returns:
        The predictions in cell-eval's form, what :func:`predict_cells` returned, and the
        batch code of every input cell (``None`` without a batch encoder).
    """
    cells = data.cells
    requested = options.requested(columns.control_label)
    labels = cells.loc[~cells["is_control"], "perturbation"]
    wanted = sorted(set(labels)) if requested is None else requested
    if not wanted:
        raise InputError(f"{source}: no perturbation to predict.")
    counts = cells[~cells["is_control"]].groupby(["context", "perturbation"]).size().to_dict()
    n_cells: dict[Key, int] = {}
    for context in sorted(cells["context"].unique()):
        n_ctrl = len(data.control_rows(context))
        for p in wanted:
            n = options.cells_per_perturbation or int(counts.get((context, p), n_ctrl))
            n_cells[(context, p)] = n
    batch = None
    if runs[0].net.batch_encoder is not None:
        batch = _batch_codes(runs[0], obs, columns, source)
    predicted = predict_ensemble(
        runs,
        data,
        n_cells,
        seed=options.seed,
        control_mean=options.control_mean,
        batch=batch,
        allow_unknown=options.allow_unknown,
        control_offset=options.control_offset,
        control_inputs=None if options.input_map is None else options.input_map(data.X),
        output_map=options.output_map,
    )
    out = assemble_predictions(data, predicted.cells, columns)
    if columns.batch_col:
        ctrl_batches = obs.loc[cells["is_control"].to_numpy(), columns.batch_col].astype(str)
        out.uns["perturbflow"] = {"control_batches": sorted(ctrl_batches.unique())}
    return out, predicted, batch


def _batch_codes(
    run: TrainedRun, obs: pd.DataFrame, columns: ColumnsParams, source: str
) -> np.ndarray:
    if not columns.batch_col:
        raise InputError(f"{run.path} has a batch encoder: name the batch column (--batch-col).")
    batches = CategoryMap.from_json(run.path / "batch_map.json")
    values = obs[columns.batch_col].astype(str)
    try:
        return batches.encode(values)
    except InputError as err:
        raise InputError(f"{source}: {err}") from err
