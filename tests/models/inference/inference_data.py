"""An inference input of the planted screen: its evaluation data and its CLI arguments."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd

from perturbflow.design import CONTEXT_SEP
from perturbflow.models.inference.gene_space import aligned_matrix
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.splits.data import SplitCells


def split_cells(data_in: ad.AnnData, run: TrainedRun) -> SplitCells:
    """``data_in`` (``celltype``, ``pert``; control ``ctrl``) as the test split of ``ds``."""
    obs = data_in.obs
    cells = pd.DataFrame(
        {
            "dataset": "ds",
            "celltype": obs["celltype"].astype(str).to_numpy(),
            "perturbation": obs["pert"].astype(str).to_numpy(),
            "is_control": (obs["pert"] == "ctrl").to_numpy(),
            "split": "test",
        },
        index=data_in.obs_names,
    )
    cells["context"] = "ds" + CONTEXT_SEP + cells["celltype"]
    X = aligned_matrix(data_in, run, source="in")
    return SplitCells(X=X, genes=list(run.genes), cells=cells, split_name="t")


def infer_args(run_dir: Path | str, adata: Path | str, *extra: str) -> list[str]:
    """``perturbflow infer`` on the planted screen's columns (``pert``, ``ctrl``, ``celltype``)."""
    return [
        "infer",
        "--run",
        str(run_dir),
        "--adata",
        str(adata),
        "--pert-col",
        "pert",
        "--control",
        "ctrl",
        "--celltype-col",
        "celltype",
        *extra,
    ]
