"""A small trained ST run and control-like cells drawn around one of its contexts."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.adaptation import ShiftFitParams
from perturbflow.models.runs.run_dir import load_run
from perturbflow.models.training.train import train_st
from tests.models.support import (
    CONTEXTS,
    N_GENES,
    loader_params,
    make_split,
    planted_effects,
    training_params,
    write_screen,
)
from tests.synthetic import COLUMNS, make_screen, split_table


@pytest.fixture(scope="session")
def adapt_run(tmp_path_factory) -> dict:
    """An ST model trained on a generated screen (3 contexts, 4 planted perturbations)."""
    root = tmp_path_factory.mktemp("adapt")
    adata = make_screen(planted_effects(), n_genes=N_GENES, contexts=CONTEXTS, noise=0.15)
    path = write_screen(adata, root / "screen.h5ad")
    table = split_table(adata, {"zs": {("C", "p3"): "test", ("B", "p2"): "val"}})
    split = make_split(adata, path, table, "zs")
    run_dir = root / "run"
    train_st(
        split,
        columns=COLUMNS,
        loader=loader_params(),
        training=training_params(max_steps=60),
        run_dir=run_dir,
    )
    return {"run_dir": run_dir, "adata": adata, "path": path, "root": root}


@pytest.fixture(scope="session")
def run(adapt_run):
    return load_run(adapt_run["run_dir"])


def control_cloud(adata: ad.AnnData, context: str, n: int, seed: int) -> np.ndarray:
    """``n`` cells drawn like the controls of ``context`` (their mean and per-gene sd)."""
    obs = adata.obs
    ctrl = adata.X[((obs["pert"] == "ctrl") & (obs["celltype"] == context)).to_numpy()]
    rng = np.random.default_rng(seed)
    cells = ctrl.mean(0) + rng.normal(0, 1, (n, ctrl.shape[1])) * ctrl.std(0)
    return cells.astype(np.float32)


def cells_adata(X: np.ndarray, genes: list[str], *, context: str, pert: str = "ctrl") -> ad.AnnData:
    """An AnnData of cells of one context, obs in the generated screens' design."""
    obs = pd.DataFrame(
        {"pert": pert, "celltype": context, "dataset": "ds"},
        index=[f"{context}_{pert}_{i}" for i in range(len(X))],
    )
    out = ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=obs)
    out.var_names = genes
    return out


def write(adata: ad.AnnData, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


def fit_params(**overrides) -> ShiftFitParams:
    values = dict(
        scale=False,
        lr=0.03,
        lr_schedule="cosine",
        max_steps=300,
        batch_size=128,
        eval_every=20,
        eval_cells=256,
        patience=5,
        min_delta=1e-5,
        l2_weight=0.0,
        bandwidth_factors=[0.5, 1.0, 2.0],
        min_bandwidth=1e-3,
        max_bandwidth=1e3,
        median_subsample=500,
        seed=0,
    )
    values.update(overrides)
    return ShiftFitParams(**values)
