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
    """

    expected_input: Literal["auto", "counts", "log1p"]
    target_sum: float | None
    n_top_genes: int
    hvg_flavor: Literal["seurat", "cell_ranger"]
    knockdown: KnockdownParams


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
class PairingParams:
    """The ``pairing`` pipeline's cache.

    Attributes:
        cache_dir: Directory of cached pairings, keyed by a content hash of what pairing
            reads (obs codes, strategy, options, seed, file identity).
    """

    cache_dir: str
