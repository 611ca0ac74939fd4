"""Generated perturbation screens with a known answer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.params import ColumnsParams, EvaluationParams, LinearBaselineParams

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
            "celltype": obs["celltype"].astype(str),
            "perturbation": obs["pert"].astype(str),
            "is_control": (obs["pert"] == "ctrl").to_numpy(),
        },
        index=obs.index,
    )
    for split, overrides in labels.items():
        col = pd.Series("train", index=obs.index)
        for (context, pert), label in overrides.items():
            mask = table["celltype"] == context
            if pert != "*":
                mask &= table["perturbation"] == pert
            col[mask] = label
        table[split] = pd.Categorical(col, categories=["train", "val", "test", "unused"])
    return table


DRUG_COLUMNS = ColumnsParams(
    pert_col="pert",
    celltype_col="celltype",
    batch_col="plate",
    control_label="DMSO",
    dataset_col="dataset",
    dataset_name="synthetic",
)


def hill(dose: float, ec50: float, n: float = 1.0) -> float:
    """The Hill fraction ``d^n / (ec50^n + d^n)`` (0 at dose 0, 1/2 at the EC50)."""
    return float(dose**n / (ec50**n + dose**n)) if dose > 0 else 0.0


def dose_label(drug: str, dose: float) -> str:
    """``drug@<dose>uM``, the label syntax of :mod:`perturbflow.perturbations`."""
    return f"{drug}@{dose:g}uM"


def make_drug_screen(
    ec50: dict[str, float],
    doses: list[float],
    *,
    n_genes: int = 24,
    n_targets: int = 8,
    contexts: tuple[str, ...] = ("K562",),
    plates: tuple[str, ...] = ("P1", "P2", "P3"),
    n_cells: int = 12,
    n_controls: int = 40,
    emax: float = 1.5,
    noise: float = 0.1,
    plate_scale: float = 0.4,
    baseline: float = 3.0,
    confounded: bool = False,
    seed: int = 0,
) -> tuple[ad.AnnData, dict[tuple[str, str], np.ndarray]]:
    """A drug screen with a known Hill dose response and plate offsets.

    Each drug moves its own ``n_targets`` genes along a fixed direction by
    ``emax * hill(dose, ec50)``; every cell of a plate (DMSO controls too) is shifted by the
    plate's offset, so only controls of the same plate give the right delta. The baseline
    keeps every value above zero (nothing is clipped), so the truth is exact. With
    ``confounded`` drug ``i`` is on plate ``i mod n_plates`` only (DMSO on every plate), as
    when a plate holds its own compounds: a control from another plate then biases the delta.

    Returns:
        The AnnData (obs ``pert`` (``drug@<dose>uM`` or ``DMSO``), ``celltype``,
        ``dataset``, ``plate``; ``obsm['X_hvg']`` = X) and the true delta of every
        ``(celltype, label)``.
    """
    rng = np.random.default_rng(seed)
    level = {c: baseline + rng.normal(0, 0.2, n_genes) for c in contexts}
    offset = {p: rng.normal(0, plate_scale, n_genes) for p in plates}
    direction = {}
    for drug in ec50:
        v = np.zeros(n_genes)
        genes = rng.choice(n_genes, n_targets, replace=False)
        v[genes] = rng.choice([-1.0, 1.0], n_targets) * rng.uniform(0.6, 1.0, n_targets)
        direction[drug] = emax * v
    truth: dict[tuple[str, str], np.ndarray] = {}
    blocks, perts, cts, pls = [], [], [], []
    for c in contexts:
        for p in plates:
            blocks.append(level[c] + offset[p] + rng.normal(0, noise, (n_controls, n_genes)))
            perts += ["DMSO"] * n_controls
            cts += [c] * n_controls
            pls += [p] * n_controls
            for i, (drug, e) in enumerate(ec50.items()):
                if confounded and plates[i % len(plates)] != p:
                    continue
                for d in doses:
                    delta = hill(d, e) * direction[drug]
                    truth[(c, dose_label(drug, d))] = delta
                    cells = level[c] + offset[p] + delta + rng.normal(0, noise, (n_cells, n_genes))
                    blocks.append(cells)
                    perts += [dose_label(drug, d)] * n_cells
                    cts += [c] * n_cells
                    pls += [p] * n_cells
    X = np.clip(np.vstack(blocks), 0, None).astype(np.float32)
    obs = pd.DataFrame(
        {"pert": perts, "celltype": cts, "dataset": "ds", "plate": pls},
        index=[f"cell{i}" for i in range(len(perts))],
    )
    adata = ad.AnnData(X=X, obs=obs)
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obsm["X_hvg"] = X.copy()
    return adata, truth


def drug_split_table(
    adata: ad.AnnData, labels: dict[str, dict[tuple[str, str], str]], *, control_label: str
) -> pd.DataFrame:
    """:func:`split_table` for a screen whose control label is not ``ctrl``."""
    table = split_table(adata, labels)
    table["is_control"] = (adata.obs["pert"] == control_label).to_numpy()
    return table


def evaluation_params(**overrides) -> EvaluationParams:
    """Evaluation params for the tests: four baselines, the ceiling, linear ranks 2 and 4."""
    values = dict(
        predictors=["control", "perturbation_mean", "context_mean", "linear"],
        reference_predictor="perturbation_mean",
        profile="minimal",
        ceiling=True,
        linear=LinearBaselineParams(ranks=[2, 4], ridge=0.1),
        seed=0,
        num_threads=1,
        plot_perturbations=2,
    )
    values.update(overrides)
    return EvaluationParams(**values)
