"""Typed parameter groups.

Each group in ``conf/*/parameters*.yml`` has a dataclass here. They are pydantic
dataclasses: Kedro (>= 1.3) instantiates them from the ``params:`` inputs of a node
before the run starts, and pydantic converts nested mappings into the nested
dataclasses, checks types and rejects unknown keys, so a typo in a YAML file fails the
run at once with the key's name. No field has a default: a key dropped by a config merge
must fail loudly rather than be silently replaced.

The same classes are the library's typed configs: a notebook user builds them directly,
e.g. ``ColumnsParams(pert_col="gene", ...)``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_STRICT)
class ColumnsParams:
    """Where the experimental design lives in ``adata.obs``.

    Attributes:
        pert_col: Perturbation label column (gene target, drug, combination ``A+B``).
        celltype_col: Cell type / cell line column (the "context").
        batch_col: Batch column (gem group, plate, replicate) or ``None``.
        control_label: The value of ``pert_col`` that marks control cells.
        dataset_col: Column naming the dataset a cell comes from, or ``None`` when the
            whole file is one dataset named ``dataset_name``.
        dataset_name: Dataset name used when ``dataset_col`` is ``None``.
    """

    pert_col: str
    celltype_col: str
    batch_col: str | None
    control_label: str
    dataset_col: str | None
    dataset_name: str


@dataclass(frozen=True, config=_STRICT)
class KnockdownParams:
    """On-target knockdown filter (defaults in cell-load: 0.30 / 0.50 / 30).

    Attributes:
        enabled: Apply the filter.
        target_col: obs column holding the targeted gene symbol, or ``None`` to read it
            from ``pert_col`` (combinations ``A+B`` are then checked component-wise).
        type_col: obs column with the perturbation type (e.g. ``perturbation_type``), or
            ``None`` to treat every perturbation as a knockdown. With a column, only
            perturbations of a type in ``knockdown_types`` are filtered; the others
            (CRISPRa, overexpression, drugs) are kept and reported as exempt.
        knockdown_types: The values of ``type_col`` that are knockdowns or knockouts.
        residual_expression: Keep a perturbation only if the mean expression of its
            target in its cells is below this fraction of the control mean.
        cell_residual_expression: Keep a cell only if its own target expression is
            below this fraction of the control mean.
        min_cells: Keep a perturbation only if at least this many cells pass.
    """

    enabled: bool
    target_col: str | None
    type_col: str | None
    knockdown_types: list[str]
    residual_expression: float
    cell_residual_expression: float
    min_cells: int


@dataclass(frozen=True, config=_STRICT)
class PreprocessingParams:
    """Normalisation, HVG selection and filtering.

    Attributes:
        expected_input: What ``X`` holds: ``counts`` (normalise + log1p), ``log1p``
            (use as is) or ``auto`` (detect). A mismatch with what is detected fails.
        target_sum: ``normalize_total`` target; ``None`` uses the median library size.
        n_top_genes: Number of highly variable genes stored in ``obsm['X_hvg']``.
        hvg_flavor: scanpy HVG flavour computed on log1p data.
        knockdown: The on-target knockdown filter.
        hvg_format: How ``obsm['X_hvg']`` is stored: ``dense``, ``csr``, or ``auto`` (dense
            when ``X`` is dense or the dense matrix takes at most 1 GiB, CSR otherwise: a
            2M x 2,000 screen is 16 GB dense, ~1.6 GB CSR at 10 % non-zeros). STATE's
            cell-load reads a dense ``X_hvg``: use ``dense`` for files handed to STATE.
        out_of_core: Stream the raw file by row ranges
            (:func:`~perturbflow.preprocess.stream.preprocess_h5ad`) instead of loading it:
            ``always``, ``never``, or ``auto`` (when its matrix takes more than 1 GiB; the
            in-memory path peaks at ~4x the matrix). Needs ``raw_adata`` to be an
            ``H5adCellsDataset`` (or a backed AnnData) of a local file with a CSR or dense
            ``X``, and the seurat flavour.
    """

    expected_input: Literal["auto", "counts", "log1p"]
    target_sum: float | None
    n_top_genes: int
    hvg_flavor: Literal["seurat", "cell_ranger"]
    knockdown: KnockdownParams
    hvg_format: Literal["auto", "dense", "csr"] = "auto"
    out_of_core: Literal["auto", "always", "never"] = "auto"


@dataclass(frozen=True, config=_STRICT)
class FewshotEntry:
    """Held-out perturbations of one ``dataset.celltype`` context."""

    val: list[str]
    test: list[str]


@dataclass(frozen=True, config=_STRICT)
class SplitSpec:
    """One named split: a STATE/cell-load TOML file, or the same sections inline.

    Attributes:
        toml: Path of a TOML split config (relative to the project root), or ``None``
            to use the inline sections below. When set, the inline sections must be empty.
        training: ``{dataset: "train"}``; empty means every dataset trains.
        zeroshot: ``{"dataset.celltype": "val" | "test"}``.
        fewshot: ``{"dataset.celltype": {val: [...], test: [...]}}``.
    """

    toml: str | None
    training: dict[str, Literal["train"]]
    zeroshot: dict[str, Literal["val", "test"]]
    fewshot: dict[str, FewshotEntry]


@dataclass(frozen=True, config=_STRICT)
class SplitsParams:
    """All named splits evaluated by the project (e.g. ``fewshot`` and ``zeroshot``).

    A split set to ``null`` is dropped: a conf environment cannot delete a key of the base
    config (parameters merge softly), but it can switch a base split off this way.
    """

    splits: dict[str, SplitSpec | None]

    def active(self) -> dict[str, SplitSpec]:
        """The named splits that are not switched off, in their configured order."""
        return {name: spec for name, spec in self.splits.items() if spec is not None}


@dataclass(frozen=True, config=_STRICT)
class LinearBaselineParams:
    """The linear baseline (Ahlmann-Eltze et al., Nature Methods 2025).

    Attributes:
        ranks: Candidate PCA ranks; the one with the best validation pearson_delta wins.
        ridge: Ridge penalty of the two-sided least-squares fit.
    """

    ranks: list[int]
    ridge: float


@dataclass(frozen=True, config=_STRICT)
class EvaluationParams:
    """Baselines and cell-eval scoring.

    Attributes:
        predictors: Baselines to build, in the order they appear in the tables.
        reference_predictor: The predictor that cell-eval's normalised score compares to.
        profile: cell-eval metric profile (``minimal`` or ``full``).
        ceiling: Also score a ``ceiling`` row (real held-out cells split in halves).
        linear: The linear baseline's settings.
        seed: Seed for control-cell sampling and the ceiling's split.
        num_threads: Threads for cell-eval's differential expression.
        plot_perturbations: How many perturbations the predicted-vs-real plot shows.
    """

    predictors: list[Literal["control", "perturbation_mean", "context_mean", "linear"]]
    reference_predictor: str
    profile: Literal["minimal", "full", "vcc", "de", "anndata"]
    ceiling: bool
    linear: LinearBaselineParams
    seed: int
    num_threads: int
    plot_perturbations: int


@dataclass(frozen=True, config=_STRICT)
class LoaderParams:
    """Cell-sentence loading (the ``loader`` params group).

    Attributes:
        obsm_key: Expression space read by the loader (``X_hvg``), or ``None`` for ``X``.
        cell_set_len: Cells per sentence (STATE's ``cell_set_len``; 512 in its default
            model, 64 to 128 for small ones).
        batch_size: Sentences per batch.
        num_workers: DataLoader worker processes.
        pin_memory: Pin batches in page-locked memory (GPU training).
        persistent_workers: Keep workers alive between epochs.
        prefetch_factor: Batches prefetched per worker (``None`` when no workers).
        pairing: Control pairing strategy: ``random``, ``celltype``, ``batch``,
            ``batch_celltype`` or ``control_mean``.
        pairing_kwargs: Options of the strategy (``control_mean``: ``{per: global|batch|context}``).
        include_control_sentences: Also train on control-to-control sentences.
        preload: ``True``/``False`` forces reading into RAM or lazily; ``None`` decides by
            ``memory_budget_mib``.
        memory_budget_mib: Preload when the matrix fits in this many MiB.
        seed: Seed of sentence sampling and pairing (epoch ``e`` uses ``(seed, e)``).
    """

    obsm_key: str | None
    cell_set_len: int
    batch_size: int
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None
    pairing: str
    pairing_kwargs: dict[str, str | int | float | bool]
    include_control_sentences: bool
    preload: bool | None
    memory_budget_mib: float
    seed: int


@dataclass(frozen=True, config=_STRICT)
class PerturbationInputParams:
    """What the ST model's perturbation encoder reads (:mod:`perturbflow.models.components.inputs`).

    Attributes:
        identity: A learned vector per training component (combinations summed).
        evidence: Honest gene-space evidence per (context, perturbation): the sum of the
            components' training effects, the perturbation's effect in other training
            contexts, the target gene's co-expression signature in the context's controls.
        target_gene: Mark the target gene(s) in gene space when they are measured.
        features_file: A per-component feature table (``.pt``/``.npz``/``.csv``: ESM2,
            GenePT, ...), or ``None``.
        identity_dropout: Training probability of hiding a sentence's identity vector, so
            that the model also learns to predict from evidence alone (how it predicts a
            perturbation it has not seen).
        dose: How doses in the labels (``drug@10nM``) are read
            (:mod:`perturbflow.models.components.dose`): ``log`` (one slot per drug plus a log-dose
            channel, so an unseen dose of a trained drug is interpolated), ``none`` (doses
            dropped), ``label`` (each drug-dose label its own identity) or ``auto``
            (``log`` when the training doses vary, else ``label``).
        dose_interpolation: Training probability of an intermediate-dose sentence between
            two adjacent observed doses of a drug (needs ``dose: log``; 0 disables it).
    """

    identity: bool
    evidence: bool
    target_gene: bool
    features_file: str | None
    identity_dropout: float
    dose: Literal["auto", "log", "none", "label"]
    dose_interpolation: float


@dataclass(frozen=True, config=_STRICT)
class PriorParams:
    """How the response prior is fitted (:mod:`perturbflow.models.components.prior`).

    Attributes:
        folds: Folds over the training keys: each training key's prior is fitted without
            its fold (cross-fitting), so training sees priors as imperfect as at test time.
        ranks: Candidate ranks of the ``linear`` prior, chosen on validation perturbations.
        ridge: Ridge penalty of the ``linear`` prior.
    """

    folds: int
    ranks: list[int]
    ridge: float


@dataclass(frozen=True, config=_STRICT)
class STModelParams:
    """Architecture of the State Transition (ST) model.

    Attributes:
        size: Preset: ``cpu`` (hidden 128, 4 layers), ``sm`` (672, 4), ``default``
            (768, 8) or ``lg`` (1024, 12); the fields below override it when not ``None``.
        hidden_dim: Width of the encoders and the transformer.
        n_layers: Transformer layers.
        n_heads: Attention heads.
        dropout: Dropout in the transformer and the MLPs.
        output_space: ``gene`` (the loader's expression space, e.g. HVGs in ``X_hvg``),
            ``all`` (additionally every gene of ``X`` through a trained decoder) or
            ``embedding`` (the loader's ``obsm_key`` is an embedding, not genes).
        batch_encoder: Add a learned batch embedding (needs ``columns.batch_col``).
        predict_residual: Predict the perturbed cells as their control cells plus a delta.
        direct_path: A linear map from the perturbation vector to the delta beside the
            transformer (combinations then add their components' shifts exactly).
        response_prior: The baseline response every perturbed sentence's predicted delta
            starts from, so the network learns each perturbation's departure from it:
            ``linear`` (the linear baseline, the context transfer in a held-out context),
            ``context_transfer`` (the perturbation's response in other contexts),
            ``context_mean`` (the context's mean training response) or ``none``.
        prior_scope: Where the prior applies: ``all`` (every perturbed sentence, in
            training with cross-fitted priors and at inference), ``out_of_context`` (the
            network trains without it; at inference a perturbation none of whose
            components was trained in its context is predicted at its prior, carried by
            control cells) or ``informed`` (as ``out_of_context`` where that prior has
            evidence of its own, and untrained combinations at the additive prior;
            :mod:`perturbflow.models.components.prior_scope`).
        prior: How the prior is fitted (folds, the linear prior's ranks and ridge).
        inputs: What the perturbation encoder reads.
    """

    size: Literal["cpu", "sm", "default", "lg"]
    hidden_dim: int | None
    n_layers: int | None
    n_heads: int | None
    dropout: float
    output_space: Literal["gene", "all", "embedding"]
    batch_encoder: bool
    predict_residual: bool
    direct_path: bool
    response_prior: Literal["none", "context_mean", "context_transfer", "linear"]
    prior_scope: Literal["all", "out_of_context", "informed"]
    prior: PriorParams
    inputs: PerturbationInputParams


@dataclass(frozen=True, config=_STRICT)
class LossParams:
    """Training loss: a set distance plus the delta-aware terms of seed 004.

    Attributes:
        name: ``energy`` (energy distance between predicted and real cell sets, STATE's
            default), ``sinkhorn`` (entropic optimal transport) or ``mse``.
        blur: geomloss ``blur`` of the sinkhorn loss.
        base_weight: Weight of the set distance.
        delta_mse_weight: Weight of the MSE between predicted and real mean deltas
            (sentence mean minus control mean); 0 disables it.
        delta_pearson_weight: Weight of ``1 - pearson`` between those deltas; 0 disables it.
        decoder_weight: Weight of the all-gene loss when ``output_space`` is ``all``.
    """

    name: Literal["energy", "sinkhorn", "mse"]
    blur: float
    base_weight: float
    delta_mse_weight: float
    delta_pearson_weight: float
    decoder_weight: float


@dataclass(frozen=True, config=_STRICT)
class OptimizerParams:
    """AdamW with an optional linear warmup and cosine decay.

    Attributes:
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay (AdamW), not applied to biases and norms.
        warmup_steps: Linear warmup steps (0: none).
        schedule: ``constant`` or ``cosine`` (decay to ``min_lr_ratio * lr`` at max_steps).
        min_lr_ratio: Final learning rate of the cosine schedule, relative to ``lr``.
        gradient_clip_val: Gradient norm clipping (0 disables it).
    """

    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: Literal["constant", "cosine"]
    min_lr_ratio: float
    gradient_clip_val: float


@dataclass(frozen=True, config=_STRICT)
class TrainerParams:
    """The trainer fields that the ``training`` and ``finetuning`` groups share.

    Attributes:
        loss: Loss.
        optimizer: Optimiser and schedule.
        max_steps: Optimiser steps.
        val_every_n_steps: Validation (val pearson_delta) every N steps.
        ckpt_every_n_steps: A checkpoint every N steps (plus ``last`` and ``best``).
        keep_step_checkpoints: How many of those periodic checkpoints a run keeps, the newest
            (``None``: every one, as STATE does). ``last`` and ``best`` are always kept;
            resuming reads ``last``, or the newest intact periodic one when a full disk
            truncated it, so keep at least 2 where disks fill.
        accelerator: Lightning accelerator (``auto``: a GPU where present, else CPU).
        devices: Lightning devices (``auto``, a count or a list as text).
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        num_nodes: Nodes for multi-node DDP.
        precision: ``auto`` (bf16-mixed on a GPU that supports it, else 32) or a Lightning
            precision string (``32``, ``16-mixed``, ``bf16-mixed``).
        seed: Seed of the weights, dropout and the loader.
        logger: ``csv`` or ``tensorboard`` (needs the tensorboard package).
        progress_bar: Show the run's progress against ``max_steps`` (a bar on a terminal,
            a log line every 30 s otherwise; :mod:`perturbflow.models.training.progress`).
        cpu_threads: Torch intra-op threads on the CPU (``None``: torch's default, one
            per core). The shipped default is 1: measured on 2 cores, 2 threads train
            1.4x faster than 1 on an idle machine and 3.3x slower while another process
            keeps one core busy (``benchmarks/cpu_threads.py``).
        resume: Resume from ``checkpoints/last.ckpt`` when the run directory has one with
            the same configuration; a finished run with the same configuration is reused.
    """

    loss: LossParams
    optimizer: OptimizerParams
    max_steps: int
    val_every_n_steps: int
    ckpt_every_n_steps: int
    keep_step_checkpoints: int | None
    accelerator: str
    devices: str | int
    strategy: str
    num_nodes: int
    precision: str
    seed: int
    logger: Literal["csv", "tensorboard"]
    progress_bar: bool
    cpu_threads: int | None
    resume: bool


@dataclass(frozen=True, config=_STRICT)
class TrainingParams(TrainerParams):
    """The ``training`` params group: one ST model per named split.

    The trainer fields are :class:`TrainerParams`'s; besides them:

    Attributes:
        splits: Named splits to train a model for (each gets its own run: the catalog's
            ``st_training`` work folder while it trains, ``st_models`` once finished).
        model: Architecture.
        ema_decay: Keep an exponential moving average of the weights with this decay per
            step (``None``: off); validation, checkpoints and the saved weights use it.
        ensemble: Networks trained per split, with seeds ``seed``, ``seed + 1``, ...; the
            split's predictions average their cells, predicted from the same control cells
            (:mod:`perturbflow.models.runs.members`). ``1``: one network.
    """

    splits: list[str]
    model: STModelParams
    ema_decay: float | None
    ensemble: int
