"""Predictions for the target's perturbations from adapted control cells.

Each requested perturbation is predicted in the target context **from the target's
control cells** moved by the shift (the inputs the network reads), through
:func:`perturbflow.models.inference.infer.infer_adata`: the same gene alignment by name, refusal
of counts, checks of unknown perturbations (an error unless ``allow_unknown``, as
``perturbflow infer``) and contexts without controls, and cell-eval's output form (the
context's real control cells, then the predicted cells).

With ``map_back`` (the default) the predicted cells are mapped back through the shift's
inverse before clipping at zero: the network works in the source-like space the shift
moved the controls into, the output is compared with the target's own cells. The ST
model predicts ``input + delta``, so for a pure shift the mapped-back prediction is
``control + delta(adapted control)``: adaptation changes which response the model
predicts, not the control level it starts from. Without it the shift's shift itself
would appear as part of every predicted effect.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.adaptation.shift import GeneShift
from perturbflow.models.inference.infer import infer_adata
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.params import ColumnsParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptedPredictions:
    """Predicted cells, their per-perturbation means and how each was encoded.

    Attributes:
        cells: cell-eval's form (the target's control cells, then the predicted cells).
        means: One row per predicted (context, perturbation): ``context``,
            ``perturbation``, ``n_cells``, then the mean of every gene.
        sources: What each perturbation vector was built from.
    """

    cells: ad.AnnData
    means: pd.DataFrame
    sources: pd.DataFrame


def mean_table(cells: ad.AnnData, columns: ColumnsParams) -> pd.DataFrame:
    """Mean predicted expression per (context, perturbation), controls left out."""
    obs = cells.obs
    pert = obs[columns.pert_col].astype(str).to_numpy()
    context = obs["context"].astype(str).to_numpy()
    keep = pert != columns.control_label
    # the model's genes only (infer also carries the input's other genes, from controls)
    genes = cells.var["predicted"].to_numpy() if "predicted" in cells.var else slice(None)
    X = cells.X[keep][:, genes]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    frame = pd.DataFrame(X, columns=list(map(str, cells.var_names[genes])))
    frame.insert(0, "perturbation", pert[keep])
    frame.insert(0, "context", context[keep])
    grouped = frame.groupby(["context", "perturbation"], sort=False)
    means = grouped.mean().reset_index()
    means.insert(2, "n_cells", grouped.size().to_numpy())
    return means


def predict_adapted(
    run: TrainedRun,
    target: ad.AnnData,
    columns: ColumnsParams,
    shift: GeneShift | None,
    *,
    perturbations: Sequence[str] | None,
    cells_per_perturbation: int | None = None,
    allow_unknown: bool = False,
    map_back: bool = True,
    seed: int = 0,
    source: str = "target",
) -> AdaptedPredictions:
    """Predict perturbations in the target from its adapted control cells.

    Args:
        run: The trained run the shift was fitted for.
        target: The target's cells (one or more contexts; control cells needed in each),
            expression in ``X`` with the model's genes among ``var_names``.
        columns: Where the design lives in ``target.obs``.
        shift: The fitted shift, or ``None`` for the unadapted predictions (the
            comparison without adaptation).
        perturbations: Labels to predict (``None``: every non-control label of
            ``target``).
        cells_per_perturbation: Cells per perturbation (``None``: as many as the real
            ones, else the control count).
        allow_unknown: Predict unknown perturbations as the average response.
        map_back: Apply the shift's inverse to the predicted cells (module docstring).
        seed: Seed of the control sampling.
        source: How to name the target in messages.

    Raises:
        InputError: As :func:`perturbflow.models.inference.infer.infer_adata`.
    """
    input_map = output_map = None
    if shift is not None:
        input_map = shift.transform
        output_map = shift.inverse_transform if map_back else None
    cells, sources = infer_adata(
        run,
        target,
        columns,
        perturbations=perturbations,
        cells_per_perturbation=cells_per_perturbation,
        allow_unknown=allow_unknown,
        seed=seed,
        source=source,
        input_map=input_map,
        output_map=output_map,
    )
    cells.uns["perturbflow_adaptation"] = {
        "adapted": shift is not None,
        "map_back": bool(map_back and shift is not None),
        "run_digest": run.digest,
    }
    return AdaptedPredictions(cells, mean_table(cells, columns), sources)
