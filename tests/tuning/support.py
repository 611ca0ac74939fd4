"""Tune params for the tests (cheap studies, short heartbeats)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from perturbflow.tuning.params import (
    CategoricalDimension,
    CellEvalObjectiveParams,
    FloatDimension,
    HeartbeatParams,
    PrunerParams,
    SamplerParams,
    TuneParams,
)
from perturbflow.tuning.study import StudyStorage


def study_storage(root: Path | str, url: str | None = None) -> StudyStorage:
    """The studies of ``<root>/optuna`` (one sqlite file each), or of database ``url``."""
    return StudyStorage(folder=Path(root) / "optuna", url=url)


def tune_params(**overrides) -> TuneParams:
    """A study with a two-dimensional space and 1 s heartbeats."""
    values = dict(
        study_name="study",
        split="zs",
        base=None,
        keep_checkpoints=False,
        n_trials=4,
        timeout=None,
        objective="pearson_delta",
        direction="maximize",
        cell_eval=CellEvalObjectiveParams(
            weights={"pearson_delta": 0.5, "discrimination_score_l1": 0.5},
            profile="anndata",
            num_threads=1,
        ),
        sampler=SamplerParams(n_startup_trials=10, multivariate=True),
        pruner=PrunerParams(
            kind="none",
            n_startup_trials=1,
            n_warmup_steps=0,
            interval_steps=1,
            percentile=50.0,
            reduction_factor=3,
        ),
        heartbeat=HeartbeatParams(interval=1, grace_period=2, max_retry=1),
        space={
            "x": FloatDimension(type="float", low=-4.0, high=4.0, log=False),
            "k": CategoricalDimension(type="categorical", choices=[1, 2, 3]),
        },
        seed=0,
    )
    values.update(overrides)
    return TuneParams(**values)


def as_dict(params: TuneParams) -> dict:
    """Plain data of the params (what a YAML file or a subprocess receives)."""
    return dataclasses.asdict(params)


def worker_args(tune: TuneParams, storage: StudyStorage) -> dict:
    """What a sweep worker process reads (``sweep_worker.read_args``): params and storage."""
    return {"tune": as_dict(tune), "folder": str(storage.folder), "url": storage.url}
