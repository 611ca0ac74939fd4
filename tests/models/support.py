"""Generated screens written to h5ad, tiny training params, and one trained run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.models.training.train import train_st
from perturbflow.params import (
    LoaderParams,
    LossParams,
    OptimizerParams,
    PerturbationInputParams,
    PriorParams,
    STModelParams,
    TrainingParams,
)
from perturbflow.splits.split_data import SplitData, split_data
from tests.synthetic import COLUMNS, make_screen, split_table

N_GENES = 24
CONTEXTS = ["A", "B", "C"]


def planted_effects(seed: int = 0) -> dict[tuple[str, str], np.ndarray]:
    """Four perturbations with strong effects shared by the three contexts."""
    rng = np.random.default_rng(seed)
    specific = {f"p{i}": rng.normal(0, 0.8, N_GENES) for i in range(4)}
    return {(c, p): d for c in CONTEXTS for p, d in specific.items()}


def loader_params(**overrides) -> LoaderParams:
    values = dict(
        obsm_key="X_hvg",
        cell_set_len=16,
        batch_size=8,
        num_workers=0,
        pin_memory=False,
        persistent_workers=False,
        prefetch_factor=None,
        pairing="random",
        pairing_kwargs={},
        include_control_sentences=True,
        preload=None,
        memory_budget_mib=256,
        seed=0,
    )
    values.update(overrides)
    return LoaderParams(**values)


def loss_params(**overrides) -> LossParams:
    values = dict(
        name="energy",
        blur=0.05,
        base_weight=1.0,
        delta_mse_weight=0.0,
        delta_pearson_weight=0.0,
        decoder_weight=1.0,
    )
    values.update(overrides)
    return LossParams(**values)


# how the tests' trainings and finetunings run: one CPU process, quiet, resumable
TRAINER_EXECUTION = dict(
    accelerator="cpu",
    devices=1,
    strategy="auto",
    num_nodes=1,
    precision="32-true",
    seed=0,
    logger="csv",
    progress_bar=False,
    cpu_threads=None,
    resume=True,
    keep_step_checkpoints=None,
)


def training_params(**overrides) -> TrainingParams:
    model = dict(
        size="cpu",
        hidden_dim=32,
        n_layers=2,
        n_heads=2,
        dropout=0.0,
        output_space="gene",
        batch_encoder=False,
        predict_residual=True,
        direct_path=True,
        response_prior="none",
        prior_scope="all",
        prior=PriorParams(folds=5, ranks=[2, 4, 8], ridge=0.1),
        inputs=PerturbationInputParams(
            identity=True,
            evidence=True,
            target_gene=False,
            features_file=None,
            identity_dropout=0.2,
            dose="auto",
            dose_interpolation=0.0,
        ),
    )
    model.update(overrides.pop("model", {}))
    loss = loss_params(**overrides.pop("loss", {}))
    values = dict(
        splits=["zs"],
        model=STModelParams(**model),
        loss=loss,
        optimizer=OptimizerParams(
            lr=3e-3,
            weight_decay=0.01,
            warmup_steps=10,
            schedule="cosine",
            min_lr_ratio=0.1,
            gradient_clip_val=10.0,
        ),
        max_steps=150,
        val_every_n_steps=50,
        ckpt_every_n_steps=50,
        **TRAINER_EXECUTION,
        ema_decay=None,
        ensemble=1,
    )
    values.update(overrides)
    return TrainingParams(**values)


def write_screen(adata: ad.AnnData, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


def make_split(adata: ad.AnnData, path: Path, table: pd.DataFrame, name: str) -> SplitData:
    return split_data(
        str(path),
        adata.obs,
        table,
        name,
        genes=list(adata.var_names),
        all_genes=list(adata.var_names),
        matrix=adata.obsm["X_hvg"],
        obsm_key="X_hvg",
    )


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> dict:
    """A screen with planted shared effects; (C, p3) is the test key, (B, p2) validation."""
    root = tmp_path_factory.mktemp("planted")
    adata = make_screen(planted_effects(), n_genes=N_GENES, contexts=CONTEXTS, noise=0.15)
    path = write_screen(adata, root / "screen.h5ad")
    table = split_table(adata, {"zs": {("C", "p3"): "test", ("B", "p2"): "val"}})
    return {"adata": adata, "path": path, "table": table, "root": root}


@pytest.fixture(scope="session")
def trained_run(planted) -> dict:
    """One ST model trained on the planted screen (shared by the inference tests)."""
    run_dir = planted["root"] / "run"
    split = make_split(planted["adata"], planted["path"], planted["table"], "zs")
    summary = train_st(
        split,
        columns=COLUMNS,
        loader=loader_params(),
        training=training_params(),
        run_dir=run_dir,
    )
    return {"run_dir": run_dir, "summary": summary, "split": split, **planted}


def with_training(params: TrainingParams, **changes) -> TrainingParams:
    return dataclasses.replace(params, **changes)
