"""Typed parameters of the adaptation (``params:adaptation``, conf/base/parameters_adaptation.yml).

Pydantic dataclasses like :mod:`perturbflow.params`: frozen, unknown keys rejected, no
field defaults (a key dropped by a config merge fails loudly). A notebook user builds them
directly, e.g. ``ShiftFitParams(scale=False, lr=0.02, ...)``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_STRICT)
class ShiftFitParams:
    """How the per-gene shift (and optional scale) is fitted.

    Attributes:
        scale: Also learn a positive per-gene scale: ``x * exp(log_scale) + shift``.
        lr: Adam learning rate of the shift's parameters (the network is frozen).
        lr_schedule: ``constant``, or ``cosine`` (decays to 5% of ``lr`` at ``max_steps``).
        max_steps: Upper bound on optimisation steps.
        batch_size: Target and source cells per minibatch (capped at the sample sizes).
        eval_every: Steps between evaluations of the MMD on the fixed evaluation sample.
        eval_cells: Cells per side of the fixed evaluation sample (the MMD curve).
        patience: Evaluations without an improvement of ``min_delta`` before stopping.
        min_delta: Smallest decrease of the evaluation MMD that counts as an improvement.
        l2_weight: Weight of ``mean(shift^2) + mean(log_scale^2)`` in the loss (0: none).
        bandwidth_factors: Multiples of the median-heuristic distance used as RBF
            bandwidths (the kernel is their mean).
        min_bandwidth: Lower clamp of every bandwidth.
        max_bandwidth: Upper clamp of every bandwidth.
        median_subsample: Pooled points used by the median heuristic.
        seed: Seed of the minibatches, the evaluation sample and the heuristic.
    """

    scale: bool
    lr: float
    lr_schedule: Literal["constant", "cosine"]
    max_steps: int
    batch_size: int
    eval_every: int
    eval_cells: int
    patience: int
    min_delta: float
    l2_weight: float
    bandwidth_factors: list[float]
    min_bandwidth: float
    max_bandwidth: float
    median_subsample: int
    seed: int


@dataclass(frozen=True, config=_STRICT)
class AdaptationSourceParams:
    """The source domain: control cells of the data the run was trained on.

    Attributes:
        files: h5ad files (a list, or one glob pattern such as ``data/src/*.h5ad``) whose
            control cells give the source embeddings (basal encoder outputs); ``None``:
            the project's preprocessed screen (the catalog's ``preprocessed_adata``).
        celltypes: Keep only control cells of these values of ``columns.celltype_col``
            (``None``: every control cell of the files).
        max_cells_per_file: Seeded subsample of each file's control cells (``None``: all).
    """

    files: list[str] | str | None
    celltypes: list[str] | None
    max_cells_per_file: int | None


@dataclass(frozen=True, config=_STRICT)
class AdaptationTargetParams:
    """The target domain: its control cells in the model's input space, and its context.

    Attributes:
        file: The target h5ad (log1p expression with the model's genes in ``var_names``);
            ``None``: the project's preprocessed screen (``preprocessed_adata``).
        celltype: The target context (a value of ``columns.celltype_col``), or ``None``
            when the file holds one context.
    """

    file: str | None
    celltype: str | None


@dataclass(frozen=True, config=_STRICT)
class PerturbationListParams:
    """Which perturbations to predict in the target context.

    Attributes:
        file: A CSV (``column`` names the column), an h5ad (``column`` names the obs
            column) or a text file (one label a line); ``None``: every non-control label of
            the target context.
        column: Column of ``file`` (``None``: ``columns.pert_col``).
    """

    file: str | None
    column: str | None


@dataclass(frozen=True, config=_STRICT)
class AdaptedPredictionParams:
    """How predictions are made from the adapted control cells.

    Attributes:
        cells_per_perturbation: Predicted cells per perturbation (``None``: as many as the
            target's real ones, else its control count).
        allow_unknown: Predict perturbations unknown to the model as the average response
            (as ``perturbflow infer --allow-unknown``); otherwise they are an error.
        map_back: Map the predicted cells back through the shift's inverse, so that they
            live in the target's space like its control cells (see docs/adaptation.md).
        seed: Seed of the control sampling.
    """

    cells_per_perturbation: int | None
    allow_unknown: bool
    map_back: bool
    seed: int


@dataclass(frozen=True, config=_STRICT)
class AdaptationParams:
    """The ``adaptation`` pipeline's parameters.

    Attributes:
        run: The trained ST run to adapt: its split name in the ``st_models`` store.
        name: The shift's name in the ``mmd_shifts`` store (``<name>/shift.pt`` +
            ``shift.json``).
        control_label: Control label of the source and target files (``None``:
            ``columns.control_label``).
        source: The source domain's files.
        target: The target file and context.
        perturbations: The perturbations to predict.
        fit: The fitting of the shift.
        predict: The predictions.
        chunk_size: Cells per forward pass of the basal encoder.
        device: Torch device (``cpu``, ``cuda``...).
    """

    run: str
    name: str
    control_label: str | None
    source: AdaptationSourceParams
    target: AdaptationTargetParams
    perturbations: PerturbationListParams
    fit: ShiftFitParams
    predict: AdaptedPredictionParams
    chunk_size: int
    device: str
