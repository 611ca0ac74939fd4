"""Predict perturbed cells from control cells with a trained ST model (seed 004's fix).

A prediction starts from **control cells** of the context (or their mean, per batch when
the run has batch codes): never from the perturbed cells themselves, which would hand the
model the answer. Each requested perturbation gets as many predicted cells as asked (by
default as many as the real ones, when the input has any), drawn from the context's
controls, cut into sentences of the model's ``cell_set_len`` and predicted set by set.

:func:`predict_cells` works on :class:`~perturbflow.evaluation.design.EvaluationData` (the
evaluation pipeline); :func:`infer_adata` is ``perturbflow infer``: it aligns a user's
AnnData to the model's genes by name, checks every requested perturbation and context
before predicting, and writes an AnnData that cell-eval accepts (control cells included).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

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
from perturbflow.preprocess.validation import detect_expression_kind

logger = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass(frozen=True)
class CellPredictions:
    """Predicted cells per key and how each perturbation was encoded.

    Attributes:
        cells: ``n x genes`` predicted cells per ``(context, perturbation)``.
        encoded: The perturbation vectors and their sources.
    """

    cells: dict[Key, np.ndarray]
    encoded: EncodedPerturbations

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
            "them (training.model.inputs.features_file), or allow_unknown to predict them "
            "as the average training response."
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
) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` control inputs of ``context`` (cells, or their batch's mean) and batch codes.

    ``inputs`` (rows like ``data.X``) replaces ``data.X`` as what the model reads.
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
    return X, codes


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
        The predicted cells and the perturbation encodings.

    Raises:
        InputError: Genes that differ from the model's, unknown perturbations, or a
            context without control cells (all checked before any prediction).
    """
    if list(data.genes) != list(run.genes):
        raise InputError("The data's genes are not the model's genes in the model's order.")
    keys = list(n_cells)
    encoded = run.inputs.encode(keys, data)
    check_known(encoded, allow_unknown=allow_unknown)
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
    for row, key in enumerate(keys):
        n = int(n_cells[key])
        n_sent = max(1, -(-n // S))
        X, codes = _control_inputs(
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
    encoded = dataclasses.replace(encoded, sources=sources)
    return CellPredictions(out, encoded)


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
def aligned_matrix(adata: ad.AnnData, run: TrainedRun, *, source: str) -> np.ndarray:
    """The input's expression in the model's genes and order (dense float32).

    Genes are matched by name to ``run.genes`` (reordered); extra genes are dropped with a
    warning; missing genes are an error that lists them. An ``embedding`` model reads its
    obsm key instead, whose width must match.

    Raises:
        InputError: Missing genes, a missing obsm key, or raw counts where the model
            expects log1p expression.
    """
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
        return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float32)
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
    extra = len(names) - len(run.genes)
    if extra:
        logger.warning("%s: %d genes the model does not use are dropped.", source, extra)
    cols = names.get_indexer(run.genes)
    M = adata.X[:, cols]
    M = M.toarray() if sp.issparse(M) else np.asarray(M)
    if detect_expression_kind(M) == "counts":
        raise InputError(
            f"{source}: X holds raw counts; the model expects log1p-normalised expression "
            "(run the preprocessing pipeline, or scanpy normalize_total + log1p)."
        )
    return M.astype(np.float32, copy=False)


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
    """Predict perturbations in every context of a user's AnnData.

    Args:
        run: The trained run.
        adata: Cells with the design columns; its control cells are the inputs.
        columns: Where the design lives in ``adata.obs``.
        perturbations: Perturbation labels to predict in every context (default: every
            non-control label of ``adata``).
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
        source: How to name the input in messages (its path).
        input_map: Maps the aligned expression (cells x the model's genes) to what the
            model reads, e.g. a domain adapter; the output's control cells stay the
            input's own.
        output_map: Maps predicted cells back before clipping (the adapter's inverse).

    Returns:
        The predictions (cell-eval's form: each context's control cells, then the predicted
        cells) and a table of how each perturbation was encoded.

    Raises:
        InputError: A missing column or control label, missing genes, an unknown
            perturbation or a context without controls: all before any prediction.
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
    celltype = obs[columns.celltype_col].astype(str).to_numpy()
    cells = pd.DataFrame(
        {
            "dataset": dataset,
            "celltype": celltype,
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
    # the requested labels, in order, without repeats and without the control itself
    requested = (
        None
        if perturbations is None
        else [p for p in dict.fromkeys(perturbations) if p != columns.control_label]
    )
    if per_batch:
        if input_map is not None or output_map is not None:
            raise InputError("per_batch does not take an input_map / output_map (adapters).")
        if not columns.batch_col:
            raise InputError(
                f"{source}: per-batch prediction needs the batch column (--batch-col)."
            )
        from perturbflow.models.plates import infer_plates  # plates imports this module

        return infer_plates(
            run,
            data,
            obs[columns.batch_col].astype(str).to_numpy(),
            columns,
            perturbations=requested,
            cells_per_perturbation=cells_per_perturbation,
            seed=seed,
            control_mean=control_mean,
            allow_unknown=allow_unknown,
            control_offset=control_offset,
        )
    wanted = sorted(set(pert[~is_control])) if requested is None else requested
    if not wanted:
        raise InputError(f"{source}: no perturbation to predict.")
    counts = cells[~cells["is_control"]].groupby(["context", "perturbation"]).size().to_dict()
    n_cells: dict[Key, int] = {}
    for context in contexts:
        n_ctrl = len(data.control_rows(context))
        for p in wanted:
            n_cells[(context, p)] = cells_per_perturbation or int(counts.get((context, p), n_ctrl))
    batch = None
    if run.net.batch_encoder is not None:
        batch = _batch_codes(run, obs, columns, source)
    predicted = predict_cells(
        run,
        data,
        n_cells,
        seed=seed,
        control_mean=control_mean,
        batch=batch,
        allow_unknown=allow_unknown,
        control_offset=control_offset,
        control_inputs=None if input_map is None else input_map(X),
        output_map=output_map,
    )
    out = assemble_predictions(data, predicted.cells, columns)
    if columns.batch_col:
        ctrl_batches = obs.loc[is_control, columns.batch_col].astype(str)
        out.uns["perturbflow"] = {"control_batches": sorted(ctrl_batches.unique())}
    return out, predicted.sources()


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
