"""Predict perturbed cells from control cells with a trained ST model (seed 004's fix).

A prediction starts from **control cells** of the context (or their mean, per batch when
the run has batch codes): never from the perturbed cells themselves, which would hand the
model the answer. Each requested perturbation gets as many predicted cells as asked (by
default as many as the real ones, when the input has any), drawn from the context's
controls, cut into sentences of the model's ``cell_set_len`` and predicted set by set.

:func:`predict_cells` works on :class:`~perturbflow.evaluation.design.EvaluationData` (the
evaluation pipeline); :func:`infer` (:func:`infer_adata` with keywords) is ``perturbflow
infer``: it reads a user's AnnData in the model's genes by name, checks every requested
perturbation and context, and NaN or inf values, before predicting, and writes an AnnData
that goes straight into ``cell-eval run`` against the input: control cells included, every
gene of the input in its order, ``var['predicted']`` marking the genes the model predicted
(the others are taken from the control cells each prediction started from).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from perturbflow.evaluation.cells import assemble_predictions
from perturbflow.evaluation.design import CONTEXT_SEP, EvaluationData
from perturbflow.exceptions import InputError
from perturbflow.loading._messages import listed
from perturbflow.loading.categories import CategoryMap
from perturbflow.models.inputs import EncodedPerturbations
from perturbflow.models.prior import prior_deltas
from perturbflow.models.run_dir import TrainedRun
from perturbflow.params import ColumnsParams
from perturbflow.perturbations import components
from perturbflow.preprocess.validation import detect_expression_kind, value_counts

logger = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass(frozen=True)
class CellPredictions:
    """Predicted cells per key and how each perturbation was encoded.

    Attributes:
        cells: ``n x genes`` predicted cells per ``(context, perturbation)``.
        encoded: The perturbation vectors and their sources.
        starts: Per key, the row of the data each predicted cell's control input was drawn
            from (with ``control_mean``, a control cell of the batch whose control mean the
            prediction started from); empty when not recorded.
    """

    cells: dict[Key, np.ndarray]
    encoded: EncodedPerturbations
    starts: dict[Key, np.ndarray] = dataclasses.field(default_factory=dict)

    def sources(self) -> pd.DataFrame:
        """One row per key: what its perturbation vector was built from."""
        return pd.DataFrame(
            {
                "context": [c for c, _ in self.encoded.keys],
                "perturbation": [p for _, p in self.encoded.keys],
                "source": self.encoded.sources,
                "unknown_components": ["+".join(u) for u in self.encoded.unknown_components],
            }
        )


def check_known(encoded: EncodedPerturbations, *, allow_unknown: bool) -> None:
    """Fail on perturbations the model knows nothing about (unless allowed).

    A perturbation is unknown when it has components without an identity slot and no
    evidence or feature vector stands in for them.

    Raises:
        InputError: Listing the unknown perturbations and their unseen components.
    """
    bad = []
    for (context, pert), source, missing in zip(
        encoded.keys, encoded.sources, encoded.unknown_components, strict=True
    ):
        covered = "evidence" in source or "features" in source
        if source == "none" or (missing and not covered):
            bad.append(f"{pert} in {context} (unseen: {'+'.join(missing) or pert})")
    if bad and not allow_unknown:
        raise InputError(
            f"{len(bad)} perturbation(s) unknown to the model: {listed(bad)}. The model never "
            "trained them and has no evidence for them; pass a features file that covers "
            "them (training.model.inputs.features_file), or pass --allow-unknown "
            "(allow_unknown=True from Python) to predict them as the average training "
            "response."
        )
    if bad:
        logger.warning(
            "Predicting %d unknown perturbation(s) as the average response: %s",
            len(bad),
            listed(bad),
        )


def _control_inputs(
    data: EvaluationData,
    context: str,
    n: int,
    rng: np.random.Generator,
    *,
    control_mean: bool,
    batch: np.ndarray | None,
    inputs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``n`` control inputs of ``context`` (cells, or their batch's mean), batch codes, rows.

    ``inputs`` (rows like ``data.X``) replaces ``data.X`` as what the model reads. The rows
    are the control cells drawn (with ``control_mean``, the cells whose batch's mean is
    the input).
    """
    M = data.X if inputs is None else inputs
    ctrl = data.control_rows(context)  # not empty: predict_cells checked every context
    picked = rng.choice(ctrl, size=n, replace=n > len(ctrl))
    X = M[picked]
    codes = None if batch is None else batch[picked]
    if control_mean:
        if codes is None:
            X = np.broadcast_to(M[ctrl].mean(axis=0), X.shape).copy()
        else:
            X = X.copy()
            for code in np.unique(codes):
                X[codes == code] = M[ctrl[batch[ctrl] == code]].mean(axis=0)
    return X, codes, picked


@torch.no_grad()
def predict_cells(
    run: TrainedRun,
    data: EvaluationData,
    n_cells: dict[Key, int],
    *,
    seed: int,
    control_mean: bool = False,
    batch: np.ndarray | None = None,
    allow_unknown: bool = False,
    combine: Literal["additive", "joint"] = "joint",
    control_offset: Literal["keep", "subtract"] = "keep",
    sentences_per_batch: int = 64,
    control_inputs: np.ndarray | None = None,
    output_map: Callable[[np.ndarray], np.ndarray] | None = None,
) -> CellPredictions:
    """Predict ``n_cells[key]`` cells for every ``(context, perturbation)`` key.

    Args:
        run: A trained run.
        data: Cells in the model's space (``data.genes == run.genes``) with their labels;
            the contexts' control cells are the inputs.
        n_cells: How many cells to predict per key.
        seed: Seed of the control sampling.
        control_mean: Start from the control mean (per batch with ``batch``) instead of
            individual control cells.
        batch: Batch code per cell of ``data`` (into the run's batch map), or ``None``.
        allow_unknown: Predict perturbations unknown to the model as the average response.
        combine: How to predict a combination ``A+B`` that was not trained in its context
            but whose components all were trained: ``additive`` sums the model's predicted
            deltas of ``A`` and of ``B`` from the same control cells (the additive model of
            double perturbations, with the model's own single predictions); ``joint``
            encodes ``A+B`` as the sum of the components' vectors in one forward pass.
        control_offset: ``subtract`` also runs each control sentence through the model
            as the control (the all-zero perturbation vector) and subtracts what the
            model does to it (its control offset, cell by cell) from the prediction, so
            the control label returns its inputs exactly; ``keep`` (default) does not.
        sentences_per_batch: Sentences per forward pass.
        control_inputs: What the model reads for each row of ``data.X`` (same shape), e.g.
            control cells moved by a domain adapter (:mod:`perturbflow.adaptation`);
            default ``data.X``. Only control rows are read.
        output_map: Applied to each key's predicted cells before clipping at zero, e.g.
            an adapter's inverse that maps predictions back to the data's space.

    Returns:
        The predicted cells, the perturbation encodings and the control rows each
        predicted cell started from.

    Raises:
        InputError: Genes that differ from the model's, unknown perturbations, or a
            context without control cells (all checked before any prediction).
    """
    if list(data.genes) != list(run.genes):
        raise InputError("The data's genes are not the model's genes in the model's order.")
    keys = list(n_cells)
    encoded = run.inputs.encode(keys, data)
    check_known(encoded, allow_unknown=allow_unknown)
    _check_prediction_inputs(run, data, keys, batch, control_offset, control_inputs)
    rng = np.random.default_rng(seed)
    S = run.cell_set_len
    clip = run.config["training"]["model"]["output_space"] != "embedding"
    additive = _additive_plan(run, keys, data) if combine == "additive" else {}
    sources = list(encoded.sources)
    kind = run.config["training"]["model"].get("response_prior", "none")  # older runs: none
    priors = prior_deltas(
        run.inputs.effects, keys, control_label=run.inputs.control_label, kind=kind
    )
    priors = [None] * len(keys) if priors is None else priors
    out: dict[Key, np.ndarray] = {}
    starts: dict[Key, np.ndarray] = {}
    for row, key in enumerate(keys):
        n = int(n_cells[key])
        n_sent = max(1, -(-n // S))
        X, codes, picked = _control_inputs(
            data,
            key[0],
            n_sent * S,
            rng,
            control_mean=control_mean,
            batch=batch,
            inputs=control_inputs,
        )
        ctrl = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).view(n_sent, S, -1)
        codes_t = None if codes is None else torch.from_numpy(codes.astype(np.int64))
        codes_t = None if codes_t is None else codes_t.view(n_sent, S)
        if key in additive:
            vectors = additive[key]
            sources[row] = "additive:" + sources[row]
        else:
            vectors = encoded.vectors[row : row + 1]
        pred = _forward(
            run,
            ctrl,
            vectors,
            codes_t,
            sentences_per_batch,
            priors[row],
            subtract_offset=control_offset == "subtract",
        )
        cells = pred.reshape(n_sent * S, -1)[:n].numpy()
        if output_map is not None:
            cells = np.asarray(output_map(cells), dtype=np.float32)
        out[key] = np.clip(cells, 0.0, None) if clip else cells
        starts[key] = picked[:n]
    encoded = dataclasses.replace(encoded, sources=sources)
    return CellPredictions(out, encoded, starts)


def _check_prediction_inputs(
    run: TrainedRun,
    data: EvaluationData,
    keys: list[Key],
    batch: np.ndarray | None,
    control_offset: str,
    control_inputs: np.ndarray | None,
) -> None:
    """The checks of :func:`predict_cells` that follow the genes and the perturbations.

    Raises:
        InputError: A context without control cells, no batch codes for a batch encoder,
            a bad ``control_offset`` or ``control_inputs`` of another shape than ``data.X``.
    """
    without = [c for c in sorted({c for c, _ in keys}) if not len(data.control_rows(c))]
    if without:
        raise InputError(
            f"Context(s) {listed(without)} have no control cells: a prediction starts from them."
        )
    if run.net.batch_encoder is not None and batch is None:
        raise InputError("The model has a batch encoder: give each cell's batch.")
    if control_offset not in ("keep", "subtract"):
        raise InputError(f"control_offset {control_offset!r}: expected 'keep' or 'subtract'.")
    if control_inputs is not None and control_inputs.shape != data.X.shape:
        raise InputError(
            f"control_inputs has shape {control_inputs.shape}, the data {data.X.shape}."
        )


def _additive_plan(run: TrainedRun, keys: list[Key], data: EvaluationData) -> dict[Key, np.ndarray]:
    """Component vectors of the untrained combinations whose components were all trained."""
    trained = set(run.inputs.effects.keys)
    plan = {}
    for context, pert in keys:
        parts = [c for c in components(pert) if c != run.inputs.control_label]
        if len(parts) < 2 or (context, pert) in trained:
            continue
        if all((context, c) in trained for c in parts):
            plan[(context, pert)] = run.inputs.encode([(context, c) for c in parts], data).vectors
    return plan


def _forward(
    run: TrainedRun,
    ctrl: torch.Tensor,
    vectors: np.ndarray,
    codes: torch.Tensor | None,
    sentences_per_batch: int,
    prior: np.ndarray | None = None,
    *,
    subtract_offset: bool = False,
) -> torch.Tensor:
    """Predicted sentences; several vectors (components) add their predicted deltas.

    ``prior`` is the key's prior delta (:mod:`perturbflow.models.prior`), or ``None``.
    ``subtract_offset`` removes the model's output for the same sentence given as the
    control (the all-zero vector, no prior) minus its input from every prediction.
    """
    device = next(run.net.parameters()).device
    preds = []
    for start in range(0, len(ctrl), sentences_per_batch):
        chunk = ctrl[start : start + sentences_per_batch].to(device)
        b = None if codes is None else codes[start : start + sentences_per_batch].to(device)
        total = chunk.clone()
        offset = None
        if subtract_offset:
            zero = torch.zeros(len(chunk), vectors.shape[1], device=device)
            offset = run.net(chunk, zero, b)[0] - chunk
        for vector in vectors:
            pert = torch.from_numpy(vector).to(device).expand(len(chunk), -1)
            prior_t = None
            if prior is not None:
                prior_t = torch.from_numpy(prior).to(device).expand(len(chunk), -1)
            pred, _ = run.net(chunk, pert, b, prior=prior_t)
            if offset is not None:
                pred = pred - offset
            total = total + (pred - chunk) if len(vectors) > 1 else pred
        preds.append(total.float().cpu())
    return torch.cat(preds)


# ---- perturbflow infer ------------------------------------------------------------
#: Rows read at a time when an input's values are checked or the output is assembled.
BLOCK_ROWS = 4096
#: Values (rows x genes) of one dense block at most, whatever the number of genes.
BLOCK_VALUES = 1 << 24


def _block_rows(n_cols: int) -> int:
    """Rows per block: :data:`BLOCK_ROWS`, fewer for wide matrices (:data:`BLOCK_VALUES`)."""
    return max(1, min(BLOCK_ROWS, BLOCK_VALUES // max(n_cols, 1)))


def _non_finite(block: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the NaN or inf values of a block (stored values when sparse)."""
    if sp.issparse(block):
        coo = sp.coo_matrix(block)
        bad = ~np.isfinite(coo.data)
        return coo.row[bad], coo.col[bad]
    rows, cols = np.nonzero(~np.isfinite(np.asarray(block)))
    return rows, cols


def check_finite(
    M: Any,
    *,
    source: str,
    what: str,
    cells: Sequence[str],
    names: Sequence[str],
    columns: np.ndarray | None = None,
    kind: str = "genes",
    expected: str = "finite log1p values",
) -> None:
    """Fail when ``M`` (cells x genes, dense or sparse) holds NaN or inf values.

    ``M`` is read in blocks of rows (never densified whole); each block's NaN and inf
    values are counted as the preprocessing counts them
    (:func:`perturbflow.preprocess.validation.value_counts`: the stored values of a sparse
    matrix), and only a block that has some is searched for where they are.

    Args:
        M: The matrix, e.g. ``adata.X`` or an obsm entry.
        source: The input's name (its path), first word of the message.
        what: What ``M`` is (``X``, ``obsm['X_pca']``).
        cells: The name of every row of ``M``.
        names: The name of every column read (of ``columns`` when given).
        columns: Only these columns of ``M`` (in this order), or ``None`` for all.
        kind: What the columns are, for the message.
        expected: What the values should be, for the message.

    Raises:
        InputError: Naming ``source``, how many cells, the first genes and cells.
    """
    found_rows, found_cols = [], []
    step = _block_rows(M.shape[1] if columns is None else len(columns))
    for start in range(0, M.shape[0], step):
        block = M[start : start + step]
        block = block if columns is None else block[:, columns]
        n_nan, n_inf, _, _ = value_counts(block)
        if n_nan or n_inf:
            rows, cols = _non_finite(block)
            found_rows.append(rows + start)
            found_cols.append(cols)
    if not found_rows:
        return
    rows = np.unique(np.concatenate(found_rows))
    cols = np.unique(np.concatenate(found_cols))
    raise InputError(
        f"{source}: {what} holds NaN or inf values in {len(rows):,} cells and {len(cols):,} "
        f"{kind}: {kind} {listed([str(names[c]) for c in cols])}; cells "
        f"{listed([str(cells[r]) for r in rows])}. Expected {expected}: fix or drop those "
        f"cells or {kind}."
    )


def aligned_matrix(adata: ad.AnnData, run: TrainedRun, *, source: str) -> np.ndarray:
    """The input's expression in the model's genes and order (dense float32).

    Genes are matched by name to ``run.genes`` (reordered); the other genes are not read;
    missing genes are an error that lists them. An ``embedding`` model reads its obsm key
    instead, whose width must match. The values read are checked for NaN and inf
    (:func:`check_finite`) before they are densified.

    Raises:
        InputError: Missing genes, a missing obsm key, NaN or inf values, or raw counts
            where the model expects log1p expression.
    """
    cells = adata.obs_names.astype(str)
    space = run.config["training"]["model"]["output_space"]
    if space == "embedding":
        key = run.config["loader"]["obsm_key"]
        if key not in adata.obsm:
            raise InputError(
                f"{source}: obsm[{key!r}] (the model's embedding) is missing "
                f"(obsm has {list(adata.obsm)})."
            )
        M = adata.obsm[key]
        if M.shape[1] != len(run.genes):
            raise InputError(
                f"{source}: obsm[{key!r}] has {M.shape[1]} columns, the model {len(run.genes)}."
            )
        check_finite(
            M,
            source=source,
            what=f"obsm[{key!r}]",
            cells=cells,
            names=list(run.genes),
            kind="columns",
            expected="finite values (the model's embedding)",
        )
        return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float32)
    cols = model_columns(adata, run, source=source)
    check_finite(adata.X, source=source, what="X", cells=cells, names=run.genes, columns=cols)
    M = adata.X[:, cols]
    M = M.toarray() if sp.issparse(M) else np.asarray(M)
    if detect_expression_kind(M) == "counts":
        raise InputError(
            f"{source}: X holds raw counts; the model expects log1p-normalised expression "
            "(run the preprocessing pipeline, or scanpy normalize_total + log1p)."
        )
    return M.astype(np.float32, copy=False)


def model_columns(adata: ad.AnnData, run: TrainedRun, *, source: str) -> np.ndarray:
    """The column of each of the model's genes in ``adata`` (matched by name).

    Raises:
        InputError: Duplicate gene names, or genes of the model missing from the input.
    """
    names = pd.Index(adata.var_names.astype(str))
    if names.has_duplicates:
        dup = names[names.duplicated()].unique().tolist()
        raise InputError(f"{source}: duplicate gene names in var_names: {listed(dup)}.")
    missing = [g for g in run.genes if g not in names]
    if missing:
        raise InputError(
            f"{source}: {len(missing)} of the model's {len(run.genes)} genes are missing from "
            f"var_names: {listed(missing)}. The model reads genes by name "
            f"({run.path / 'genes.json'})."
        )
    return names.get_indexer(run.genes)


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
            controls (:func:`perturbflow.models.plates.infer_plates`): the plates' own
            perturbations, or every requested one on every plate with controls.
        seed: Seed of the control sampling.
        input_map: Maps the aligned expression (cells x the model's genes) to what the
            model reads, e.g. a domain adapter; the output's control cells stay the
            input's own.
        output_map: Maps predicted cells back before clipping (the adapter's inverse).
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
    run: TrainedRun,
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
        run: The trained run.
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
    run: TrainedRun,
    adata: ad.AnnData,
    columns: ColumnsParams,
    options: InferOptions,
    *,
    source: str = "input",
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Predict perturbations in every context of a user's AnnData (``perturbflow infer``).

    Args:
        run: The trained run.
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
    data = _input_data(run, adata, columns, source)
    gene_space = run.config["training"]["model"]["output_space"] != "embedding"
    if gene_space:
        _check_other_genes(adata, run, source)
    if options.per_batch:
        out, sources = _infer_per_batch(run, data, adata.obs, columns, options, source)
        starts, groups = None, adata.obs[columns.batch_col].astype(str).to_numpy()
    else:
        out, predicted, groups = _infer_contexts(run, data, adata.obs, columns, options, source)
        starts, sources = predicted.starts, predicted.sources()
    if not gene_space:
        out.var["predicted"] = True
        return out, sources
    origin, is_pred = _origins(out.obs, data, columns, starts, groups, seed=options.seed)
    means = None
    if options.control_mean:
        means = _control_means(adata.X, origin, is_pred, data, groups)
    return _with_input_genes(out, adata, data.genes, origin, means), sources


def _input_data(
    run: TrainedRun, adata: ad.AnnData, columns: ColumnsParams, source: str
) -> EvaluationData:
    """The input's design and its expression in the model's genes, checked.

    Raises:
        InputError: A missing column, no control cells, a context without controls, or
            what :func:`aligned_matrix` refuses.
    """
    obs = adata.obs
    needed = [columns.pert_col, columns.celltype_col]
    needed += [c for c in (columns.batch_col, columns.dataset_col) if c]
    absent = [c for c in needed if c not in obs.columns]
    if absent:
        raise InputError(f"{source}: obs lacks column(s) {absent} (obs has {list(obs.columns)}).")
    pert = obs[columns.pert_col].astype(str)
    is_control = (pert == columns.control_label).to_numpy()
    if not is_control.any():
        raise InputError(
            f"{source}: no cell has {columns.pert_col} == {columns.control_label!r}; the "
            "control cells are the inputs of a prediction."
        )
    X = aligned_matrix(adata, run, source=source)
    dataset = (
        obs[columns.dataset_col].astype(str).to_numpy()
        if columns.dataset_col
        else np.full(len(obs), columns.dataset_name, dtype=object)
    )
    cells = pd.DataFrame(
        {
            "dataset": dataset,
            "celltype": obs[columns.celltype_col].astype(str).to_numpy(),
            "perturbation": pert.to_numpy(),
            "is_control": is_control,
            "split": "test",
        },
        index=adata.obs_names.astype(str),
    )
    cells["context"] = cells["dataset"] + CONTEXT_SEP + cells["celltype"]
    data = EvaluationData(X=X, genes=list(run.genes), cells=cells, split_name="infer")
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
    run: TrainedRun,
    data: EvaluationData,
    obs: pd.DataFrame,
    columns: ColumnsParams,
    options: InferOptions,
    source: str,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """``per_batch``: every plate from its own controls (the model's genes)."""
    if options.input_map is not None or options.output_map is not None:
        raise InputError("per_batch does not take an input_map / output_map (adapters).")
    if not columns.batch_col:
        raise InputError(f"{source}: per-batch prediction needs the batch column (--batch-col).")
    from perturbflow.models.plates import infer_plates  # plates imports this module

    return infer_plates(
        run,
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
    run: TrainedRun,
    data: EvaluationData,
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
    if run.net.batch_encoder is not None:
        batch = _batch_codes(run, obs, columns, source)
    predicted = predict_cells(
        run,
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


def _origins(
    obs: pd.DataFrame,
    data: EvaluationData,
    columns: ColumnsParams,
    starts: dict[Key, np.ndarray] | None,
    groups: np.ndarray | None,
    *,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The input row each output row's genes not predicted come from, and which are predicted.

    A control cell of the output is its own input row; a predicted cell is the control
    cell its prediction started from (``starts``). Without ``starts`` (per-plate
    prediction, whose starts are not recorded) it is a control cell of the same context
    and plate, drawn with ``seed``: ``groups`` is then the plate of every input row and
    ``obs[columns.batch_col]`` that of every output row.

    Returns:
        The input row of every output row, and whether each output row is a predicted
        cell (not one of the input's control cells).
    """
    context = obs["context"].astype(str).to_numpy()
    pert = obs[columns.pert_col].astype(str).to_numpy()
    is_ctrl = pert == columns.control_label
    origin = np.full(len(obs), -1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    plates = None if starts is not None else obs[columns.batch_col].astype(str).to_numpy()
    by_key = pd.Series(np.arange(len(obs))).groupby([context, pert]).indices
    for c, p in sorted(by_key):
        rows = by_key[(c, p)]  # ascending: the order the output was assembled in
        if p == columns.control_label:
            origin[rows] = data.control_rows(c)
        elif plates is None:
            origin[rows] = starts[(c, p)]
        else:
            ctrl = data.control_rows(c)
            for plate in np.unique(plates[rows]):
                on = rows[plates[rows] == plate]
                pool = ctrl[groups[ctrl] == plate]
                origin[on] = rng.choice(pool, size=len(on), replace=len(on) > len(pool))
    return origin, ~is_ctrl


def _control_means(
    X: Any,
    origin: np.ndarray,
    is_pred: np.ndarray,
    data: EvaluationData,
    groups: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of every gene over the controls a control-mean prediction started from.

    The controls of a predicted cell are those of its start's context (and batch or
    plate, ``groups``), as :func:`predict_cells` averages them.

    Returns:
        The means (one row per group of controls) and, per output row, its row of the
        means (``-1`` for the cells copied from an input row).
    """
    context = data.cells["context"].to_numpy()
    label = np.zeros(len(context), dtype=int) if groups is None else np.asarray(groups)
    rows = np.flatnonzero(is_pred)
    codes, keys = pd.MultiIndex.from_arrays(
        [context[origin[rows]], label[origin[rows]]]
    ).factorize()
    which = np.full(len(origin), -1, dtype=np.int64)
    which[rows] = codes
    means = np.zeros((len(keys), X.shape[1]), dtype=np.float32)
    for i, (c, group) in enumerate(keys):
        ctrl = data.control_rows(c)
        members = np.sort(ctrl[label[ctrl] == group])
        means[i] = _row_mean(X, members)
    return means, which


def _row_mean(X: Any, rows: np.ndarray) -> np.ndarray:
    """Mean of some rows of ``X`` (dense or sparse), summed in blocks of rows."""
    total = np.zeros(X.shape[1], dtype=np.float64)
    step = _block_rows(X.shape[1])
    for start in range(0, len(rows), step):
        total += np.asarray(X[rows[start : start + step]].sum(axis=0), dtype=np.float64).ravel()
    return total / max(len(rows), 1)


def _with_input_genes(
    out: ad.AnnData,
    adata: ad.AnnData,
    genes: Sequence[str],
    origin: np.ndarray,
    means: tuple[np.ndarray, np.ndarray] | None,
) -> ad.AnnData:
    """The predictions with every gene of the input, in its order (``var['predicted']``).

    Built in blocks of rows: the model's genes (``genes``) come from ``out``, the others
    from the input rows in ``origin``, or from the control means of ``means``
    (:func:`_control_means`) for the rows it names. Sparse when the input's ``X`` is.
    """
    X = adata.X
    n_genes = X.shape[1]
    cols = pd.Index(adata.var_names.astype(str)).get_indexer(list(genes))
    table, which = means if means is not None else (None, np.full(len(origin), -1))
    step = _block_rows(n_genes)
    blocks = []
    for start in range(0, len(origin), step):
        rows, group = origin[start : start + step], which[start : start + step]
        part = np.empty((len(rows), n_genes), dtype=np.float32)
        copied = group < 0
        if copied.any():
            picked = X[rows[copied]]
            part[copied] = picked.toarray() if sp.issparse(picked) else np.asarray(picked)
        if table is not None and not copied.all():
            part[~copied] = table[group[~copied]]
        part[:, cols] = out.X[start : start + step]
        blocks.append(sp.csr_matrix(part) if sp.issparse(X) else part)
    matrix = sp.vstack(blocks, format="csr") if sp.issparse(X) else np.vstack(blocks)
    var = adata.var.copy()
    var.index = pd.Index(adata.var_names.astype(str))
    var["predicted"] = np.isin(np.arange(n_genes), cols)
    return ad.AnnData(X=matrix, obs=out.obs, var=var, uns=dict(out.uns))


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
