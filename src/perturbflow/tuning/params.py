"""Typed parameters of the ``tune`` params group (``conf/base/parameters_tune.yml``).

Pydantic dataclasses like :mod:`perturbflow.params`: frozen, unknown keys rejected, no
defaults (a key dropped by a config merge must fail loudly). Kedro builds
:class:`TuneParams` from ``params:tune`` before the run; a notebook user builds it directly.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True, config=_STRICT)
class FloatDimension:
    """A float drawn from ``[low, high]`` (``trial.suggest_float``).

    Attributes:
        type: ``float``.
        low: Lower bound (inclusive).
        high: Upper bound (inclusive).
        log: Sample on a log scale (``low`` must then be > 0).
    """

    type: Literal["float"]
    low: float
    high: float
    log: bool


@dataclass(frozen=True, config=_STRICT)
class IntDimension:
    """An integer drawn from ``[low, high]`` (``trial.suggest_int``).

    Attributes:
        type: ``int``.
        low: Lower bound (inclusive).
        high: Upper bound (inclusive).
        log: Sample on a log scale (``low`` must then be >= 1).
    """

    type: Literal["int"]
    low: int
    high: int
    log: bool


@dataclass(frozen=True, config=_STRICT)
class CategoricalDimension:
    """One of a list of values (``trial.suggest_categorical``).

    Attributes:
        type: ``categorical``.
        choices: The values (numbers, strings or booleans).
    """

    type: Literal["categorical"]
    choices: list[bool | int | float | str]


Dimension = Annotated[
    FloatDimension | IntDimension | CategoricalDimension, Field(discriminator="type")
]


@dataclass(frozen=True, config=_STRICT)
class SamplerParams:
    """Optuna's TPE sampler.

    Attributes:
        n_startup_trials: Random trials before TPE models the history.
        multivariate: Model the parameters jointly (captures e.g. LoRA rank x alpha).
    """

    n_startup_trials: int
    multivariate: bool


@dataclass(frozen=True, config=_STRICT)
class PrunerParams:
    """Pruning of unpromising trials from their validation pearson_delta.

    Attributes:
        kind: ``none``, ``median`` (stop a trial below the median of the earlier trials at
            the same step), ``percentile`` or ``hyperband``.
        n_startup_trials: Trials that are never pruned (median, percentile).
        n_warmup_steps: Training steps before a trial can be pruned (median, percentile;
            hyperband's minimum resource).
        interval_steps: Check every this many reported steps (median, percentile).
        percentile: Keep trials above this percentile (percentile only, 0-100).
        reduction_factor: Hyperband's reduction factor.
    """

    kind: Literal["none", "median", "percentile", "hyperband"]
    n_startup_trials: int
    n_warmup_steps: int
    interval_steps: int
    percentile: float
    reduction_factor: int


@dataclass(frozen=True, config=_STRICT)
class HeartbeatParams:
    """How trials left ``RUNNING`` by a killed process are detected and handled.

    Attributes:
        interval: Seconds between the heartbeats a running trial writes to the storage.
        grace_period: A ``RUNNING`` trial whose last heartbeat is older than this many
            seconds is dead: it is marked ``FAIL`` before the next trial starts.
        max_retry: How many times the parameters of a dead trial are enqueued again
            (a new trial with the same parameters); 0 only marks it ``FAIL``.
    """

    interval: int
    grace_period: int
    max_retry: int


@dataclass(frozen=True, config=_STRICT)
class CellEvalObjectiveParams:
    """The ``cell_eval`` objective: a weighted mean of cell-eval metrics on validation.

    Attributes:
        weights: cell-eval metric name -> weight (e.g. ``pearson_delta: 0.5``,
            ``discrimination_score_l1: 0.5``). The objective is
            ``sum_m w_m * mean_p metric_m(p) / sum_m |w_m|`` over the validation
            perturbations ``p``.
        profile: cell-eval metric profile that computes those metrics (``minimal``).
        num_threads: Threads of cell-eval's differential-expression step.
    """

    weights: dict[str, float]
    profile: Literal["minimal", "full", "vcc", "de", "anndata"]
    num_threads: int


@dataclass(frozen=True, config=_STRICT)
class TuneParams:
    """The ``tune`` params group: one Optuna study over the finetuning hyper-parameters.

    Attributes:
        study_name: Name of the study in the storage (the catalog's ``tune_storage``: one
            sqlite file per study, or one database for many).
        split: The named split whose training cells are finetuned on and whose
            validation perturbations score a trial, or ``None`` for ``finetuning.split``.
        base: The trained run to finetune (its split name in the ``st_models`` store),
            or ``None`` for ``finetuning.base``.
        keep_checkpoints: Keep each finished trial's Lightning checkpoints; ``False``
            deletes ``checkpoints/`` once the trial ended (its adapter, summary and logs
            stay), since every checkpoint holds the whole module.
        n_trials: Finished trials (complete or pruned) the study should hold in total; a
            resumed sweep runs only the missing ones.
        timeout: Stop starting new trials after this many seconds (``None``: no limit).
        objective: ``pearson_delta`` (the best validation pearson_delta of the run) or
            ``cell_eval`` (see :class:`CellEvalObjectiveParams`).
        direction: ``maximize`` or ``minimize`` the objective.
        cell_eval: The ``cell_eval`` objective's metrics and weights.
        sampler: TPE settings.
        pruner: Pruner settings.
        heartbeat: Detection of trials killed mid-way.
        space: Search space: a dotted field path of ``FinetuningParams``
            (``lora.rank``, ``loss.delta_mse_weight``, ``optimizer.lr``) -> its dimension.
        seed: Seed of the sampler (offset by the trials already in the study).
    """

    study_name: str
    split: str | None
    base: str | None
    keep_checkpoints: bool
    n_trials: int
    timeout: float | None
    objective: Literal["pearson_delta", "cell_eval"]
    direction: Literal["maximize", "minimize"]
    cell_eval: CellEvalObjectiveParams
    sampler: SamplerParams
    pruner: PrunerParams
    heartbeat: HeartbeatParams
    space: dict[str, Dimension]
    seed: int
