"""Predict perturbed cells from control cells with a trained ST model (seed 004's fix).

A prediction starts from **control cells** of the context (or their mean, per batch when
the run has batch codes): never from the perturbed cells themselves, which would hand the
model the answer. Each requested perturbation gets as many predicted cells as asked (by
default as many as the real ones, when the input has any), drawn from the context's
controls, cut into sentences of the model's ``cell_set_len`` and predicted set by set.

:func:`predict_cells` works on :class:`~perturbflow.splits.data.SplitCells` (the
training, finetuning and evaluation pipelines); :mod:`perturbflow.models.inference.infer` is the
same on a user's AnnData (``perturbflow infer``).
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
import torch

from perturbflow.exceptions import InputError
from perturbflow.loading._messages import listed
from perturbflow.models.components.inputs import EncodedPerturbations
from perturbflow.models.inference.control_draw import ControlMeans, draw_control_inputs
from perturbflow.models.inference.priors import prior_plan
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.params import ColumnsParams
from perturbflow.perturbations import components
from perturbflow.predictions import assemble_predictions, clip_keeping_mean, shifted_controls
from perturbflow.splits.data import SplitCells

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
        return self.encoded.table()


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


@torch.no_grad()
def predict_cells(
    run: TrainedRun,
    data: SplitCells,
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
    network_only: bool = False,
    centre_draw: bool = True,
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
            control cells moved by an MMD shift (:mod:`perturbflow.adaptation`);
            default ``data.X``. Only control rows are read.
        network_only: Predict every key by the network, none at its prior (a run of
            ``prior_scope`` ``informed`` or ``out_of_context``; the tuning sweep compares
            networks so).
        output_map: Applied to each key's predicted cells before clipping at zero, e.g.
            a shift's inverse that maps predictions back to the data's space.
        centre_draw: Move the network's cells of each key by the context's control mean
            minus the mean of the control inputs drawn for it (``output_space: gene``),
            as the keys at their prior are: the predicted population's mean then does not
            carry which control cells were drawn (a residual network passes the draw's
            deviation from the control mean through; on the validation perturbations
            centring scored 0.012 higher, docs/benchmarks.md). The control label keeps
            its drawn cells. ``False``: the cells as the network returns them.

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
    output_space = run.config["training"]["model"]["output_space"]
    clip = output_space != "embedding"
    additive = _additive_plan(run, keys, data) if combine == "additive" else {}
    sources = list(encoded.sources)
    prior, plan = prior_plan(run, keys, data, network_only=network_only)
    out: dict[Key, np.ndarray] = {}
    starts: dict[Key, np.ndarray] = {}
    means = ControlMeans(data, control_inputs)
    for row, key in enumerate(keys):
        n = int(n_cells[key])
        n_sent = max(1, -(-n // S))
        X, codes, picked = draw_control_inputs(
            data, key[0], n_sent * S, rng, means, control_mean=control_mean, batch=batch
        )
        ctrl = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).view(n_sent, S, -1)
        codes_t = None if codes is None else torch.from_numpy(codes.astype(np.int64))
        codes_t = None if codes_t is None else codes_t.view(n_sent, S)
        if key in additive:
            vectors = additive[key]
            sources[row] = "additive:" + sources[row]
        else:
            vectors = encoded.vectors[row : row + 1]
        if plan.anchored[row]:  # the control cells it starts from, moved by the prior delta
            population = means.population(key[0])
            cells = shifted_controls(X[:n], population, plan.deltas[row], clip=False)
            sources[row] = f"prior {prior.kind}:{plan.sources[row]}"
        else:
            pred = _forward(
                run,
                ctrl,
                vectors,
                codes_t,
                sentences_per_batch,
                plan.added(row),
                subtract_offset=control_offset == "subtract",
            )
            cells = pred.reshape(n_sent * S, -1)[:n].numpy()
            if centre_draw and output_space == "gene" and encoded.sources[row] != "control":
                centre = means.population(key[0]) - X[:n].mean(axis=0)
                cells = (cells + centre).astype(np.float32)
        if output_map is not None:
            cells = np.asarray(output_map(cells), dtype=np.float32)
        if clip:  # a key at its prior keeps its population mean (the prior's delta)
            cells = clip_keeping_mean(cells) if plan.anchored[row] else np.clip(cells, 0, None)
        out[key] = cells
        starts[key] = picked[:n]
    encoded = dataclasses.replace(encoded, sources=sources)
    return CellPredictions(out, encoded, starts)


def _check_prediction_inputs(
    run: TrainedRun,
    data: SplitCells,
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


def _additive_plan(run: TrainedRun, keys: list[Key], data: SplitCells) -> dict[Key, np.ndarray]:
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

    ``prior`` is the key's prior delta (:mod:`perturbflow.models.components.prior`), or ``None``.
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


Runs = TrainedRun | Sequence[TrainedRun]
"""A run, or the runs of a seed ensemble (:mod:`perturbflow.models.runs.members`)."""


def as_runs(run: Runs) -> list[TrainedRun]:
    """``run`` as a list of runs (one run, or an ensemble's)."""
    return list(run) if isinstance(run, Sequence) else [run]


def predict_ensemble(
    runs: Sequence[TrainedRun],
    data: SplitCells,
    n_cells: dict[Key, int],
    *,
    seed: int,
    **options: Any,
) -> CellPredictions:
    """Predict with every run of a seed ensemble and average their cells.

    Each run predicts from the same control cells (the same ``seed`` draws the same rows
    for runs of one configuration), so cell ``i`` of the average is the members' mean
    prediction for control cell ``i``; a key at its prior is the same in every member and
    stays as it is. Encodings and sources are the first run's (the members share the
    split, so they encode alike).

    Args:
        runs: The ensemble's runs (:mod:`perturbflow.models.runs.members`), one or more,
            trained on the same genes with the same sentence length.
        data: As :func:`predict_cells`.
        n_cells: As :func:`predict_cells`.
        seed: Seed of the control sampling, the same for every run.
        **options: :func:`predict_cells`' other keyword arguments.

    Returns:
        The averaged predictions.

    Raises:
        InputError: No run, or runs of different genes or sentence lengths.
    """
    if not runs:
        raise InputError("An ensemble needs at least one trained run; none was given.")
    first = runs[0]
    for run in runs[1:]:
        if list(run.genes) != list(first.genes) or run.cell_set_len != first.cell_set_len:
            raise InputError(
                f"{run.path} cannot be averaged with {first.path}: an ensemble's runs must "
                "share genes and sentence length (train them with the same settings but "
                "training.seed)."
            )
    result = predict_cells(first, data, n_cells, seed=seed, **options)
    if len(runs) == 1:
        return result
    # a running sum: one member's cells beside the sum at a time, not all K at once
    total = {key: value.astype(np.float64) for key, value in result.cells.items()}
    for run in runs[1:]:
        for key, value in predict_cells(run, data, n_cells, seed=seed, **options).cells.items():
            total[key] += value
    cells = {key: (value / len(runs)).astype(np.float32) for key, value in total.items()}
    return CellPredictions(cells, result.encoded, result.starts)


def predict_heldout(
    run: Runs,
    data: SplitCells,
    columns: ColumnsParams,
    *,
    seed: int,
    label: str = "test",
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Predict every held-out perturbation of a split from its context's control cells.

    As many cells per perturbation as the real ones; perturbations the model never saw are
    predicted from what it knows of them (their evidence, or the average response), as
    ``perturbation_sources`` says.

    Args:
        run: A trained (or finetuned) run, in the split's genes, or the runs of a seed
            ensemble (their cells averaged, :func:`predict_ensemble`).
        data: The split's cells.
        columns: Where the design lives (the output's columns).
        seed: Seed of the control sampling.
        label: ``"test"`` or ``"val"``.

    Returns:
        The predictions in cell-eval's form (:func:`~perturbflow.predictions.assemble_predictions`)
        and how each perturbation was encoded.

    Raises:
        InputError: The split has no perturbation labelled ``label``, or the run was trained
            on other genes.
    """
    runs = as_runs(run)
    for member in runs:
        if list(data.genes) != list(member.genes):
            raise InputError(
                f"{member.path} was trained on other genes than split {data.split_name!r} "
                "now has; retrain it (kedro run --pipelines training)."
            )
    keys = data.heldout_keys(label)
    if not keys:
        raise InputError(f"Split {data.split_name!r} has no {label} perturbation to predict.")
    result = predict_ensemble(runs, data, keys, seed=seed, allow_unknown=True)
    return assemble_predictions(data, result.cells, columns), result.sources()
