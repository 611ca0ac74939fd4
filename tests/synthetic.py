"""Generated perturbation screens with a known answer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.params import ColumnsParams

COLUMNS = ColumnsParams(
    pert_col="pert",
    celltype_col="celltype",
    batch_col=None,
    control_label="ctrl",
    dataset_col="dataset",
    dataset_name="synthetic",
)


def make_screen(
    effects: dict[tuple[str, str], np.ndarray],
    *,
    n_genes: int,
    contexts: list[str],
    n_cells: int = 60,
    n_controls: int = 120,
    noise: float = 0.05,
    baseline: float = 2.0,
    seed: int = 0,
) -> ad.AnnData:
    """A log1p-like screen: per-context control level plus planted per-perturbation deltas.

    Args:
        effects: Planted delta per ``(context, perturbation)``.
        n_genes: Number of genes.
        contexts: Cell types (all in dataset ``ds``).
        n_cells: Cells per perturbation.
        n_controls: Control cells per context.
        noise: Per-cell Gaussian noise.
        baseline: Mean expression of controls.
        seed: Seed.

    Returns:
        AnnData with obs ``pert``, ``celltype``, ``dataset`` and ``obsm['X_hvg']`` = X.
    """
    rng = np.random.default_rng(seed)
    level = {c: baseline + rng.normal(0, 0.2, n_genes) for c in contexts}
    blocks, perts, cts = [], [], []
    for c in contexts:
        blocks.append(level[c] + rng.normal(0, noise, (n_controls, n_genes)))
        perts += ["ctrl"] * n_controls
        cts += [c] * n_controls
    for (c, p), delta in effects.items():
        blocks.append(level[c] + delta + rng.normal(0, noise, (n_cells, n_genes)))
        perts += [p] * n_cells
        cts += [c] * n_cells
    X = np.clip(np.vstack(blocks), 0, None).astype(np.float32)
    obs = pd.DataFrame(
        {"pert": perts, "celltype": cts, "dataset": "ds"},
        index=[f"cell{i}" for i in range(len(perts))],
    )
    adata = ad.AnnData(X=X, obs=obs)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obsm["X_hvg"] = X.copy()
    return adata


def split_table(adata: ad.AnnData, labels: dict[str, dict[tuple[str, str], str]]) -> pd.DataFrame:
    """A split table; ``labels[split][(context, pert)]`` overrides the default ``train``.

    A context listed with perturbation ``"*"`` labels every cell of it (controls too).
    """
    obs = adata.obs
    table = pd.DataFrame(
        {
            "dataset": obs["dataset"].astype(str),
            "context": obs["celltype"].astype(str),
            "perturbation": obs["pert"].astype(str),
            "is_control": (obs["pert"] == "ctrl").to_numpy(),
        },
        index=obs.index,
    )
    for split, overrides in labels.items():
        col = pd.Series("train", index=obs.index)
        for (context, pert), label in overrides.items():
            mask = table["context"] == context
            if pert != "*":
                mask &= table["perturbation"] == pert
            col[mask] = label
        table[split] = pd.Categorical(col, categories=["train", "val", "test", "unused"])
    return table
