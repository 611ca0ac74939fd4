"""A base run trained on two contexts, and a new context whose responses are reversed.

Contexts A and B respond to p0..p3 with planted deltas; the new context D responds to the
same perturbations with the *opposite* deltas (like CRISPRi where the base saw CRISPRa)
and to p4, which the base never saw. The base run trains on A and B only; finetuning
trains on D's p0, p1 and p4, validates on p2 and tests p3, so a finetuned model has
something to learn that the base cannot know.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from perturbflow.models.training.finetune import FinetuningParams, LoraParams
from perturbflow.models.training.train import train_st
from tests.models.support import (
    TRAINER_EXECUTION,
    loader_params,
    loss_params,
    make_split,
    training_params,
    write_screen,
)
from tests.synthetic import COLUMNS, make_screen, split_table

N_GENES = 24


def reversed_effects(seed: int = 0) -> dict[tuple[str, str], np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = {f"p{i}": rng.normal(0, 0.8, N_GENES) for i in range(4)}
    effects = {(c, p): d for c in ("A", "B") for p, d in shared.items()}
    effects.update({("D", p): -d for p, d in shared.items()})
    effects[("D", "p4")] = rng.normal(0, 0.8, N_GENES)
    return effects


def finetuning_params(**overrides):
    lora = dict(
        rank=4,
        alpha=8.0,
        dropout=0.0,
        targets=["attention", "mlp", "perturbation_encoder", "direct_path"],
        basal_rank=None,
    )
    lora.update(overrides.pop("lora", {}))
    values = dict(
        base="base",
        method="lora",
        lora=LoraParams(**lora),
        new_identity_slots=True,
        contexts=["ds.D"],
        identity_dropout=0.0,
        loss=loss_params(delta_mse_weight=1.0, delta_pearson_weight=0.5),
        optimizer=dataclasses.replace(
            training_params().optimizer, lr=1e-2, warmup_steps=5, weight_decay=0.0
        ),
        max_steps=40,
        val_every_n_steps=20,
        ckpt_every_n_steps=20,
        **TRAINER_EXECUTION,
        split="ft",
        predictor="st_lora",
    )
    values.update(overrides)
    return FinetuningParams(**values)


@pytest.fixture(scope="session")
def screen(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("finetune")
    adata = make_screen(reversed_effects(), n_genes=N_GENES, contexts=["A", "B", "D"], noise=0.15)
    path = write_screen(adata, root / "screen.h5ad")
    base_labels = {("D", "*"): "unused", ("B", "p2"): "val"}
    ft_labels = {("D", "p2"): "val", ("D", "p3"): "test"}
    table = split_table(adata, {"base": base_labels, "ft": ft_labels})
    return {"adata": adata, "path": path, "table": table, "root": root}


def _train_base(screen: dict, name: str, seed: int) -> Path:
    run_dir = screen["root"] / name
    split = make_split(screen["adata"], screen["path"], screen["table"], "base")
    training = training_params(max_steps=80, val_every_n_steps=40, ckpt_every_n_steps=40, seed=seed)
    train_st(split, columns=COLUMNS, loader=loader_params(), training=training, run_dir=run_dir)
    return run_dir


@pytest.fixture(scope="session")
def base_run(screen) -> Path:
    return _train_base(screen, "base", 0)


@pytest.fixture(scope="session")
def ft_split(screen):
    return make_split(screen["adata"], screen["path"], screen["table"], "ft")
