"""Domain adaptation of a trained ST model's inputs (no Kedro inside).

Learn a per-gene shift (optionally a scale) of a *target* domain's control expression so
that the frozen basal encoder maps it onto the *source* domain's control embeddings
(multi-scale RBF MMD), then predict the target's perturbations from the adapted controls.
See docs/adaptation.md.
"""

from perturbflow.adaptation.config import (
    AdaptationParams,
    AdaptationSourceParams,
    AdaptationTargetParams,
    AdaptedPredictionParams,
    PerturbationListParams,
    ShiftFitParams,
)
from perturbflow.adaptation.io import (
    SourceEmbeddings,
    TargetCells,
    control_expression,
    read_cells,
    read_perturbation_list,
    resolve_files,
    select_cells,
    source_embeddings,
)
from perturbflow.adaptation.mmd import median_bandwidth, mmd2, multiscale_bandwidths
from perturbflow.adaptation.plots import plot_mmd_curve
from perturbflow.adaptation.predict import AdaptedPredictions, mean_table, predict_adapted
from perturbflow.adaptation.shift import GeneShift, ShiftFit, embed, fit_shift, frozen
from perturbflow.adaptation.store import (
    MMDShift,
    load_shift,
    read_shift,
    shift_metadata,
    write_shift,
)

__all__ = [
    "AdaptationParams",
    "AdaptationSourceParams",
    "AdaptationTargetParams",
    "AdaptedPredictionParams",
    "AdaptedPredictions",
    "GeneShift",
    "PerturbationListParams",
    "ShiftFit",
    "ShiftFitParams",
    "SourceEmbeddings",
    "TargetCells",
    "shift_metadata",
    "control_expression",
    "embed",
    "fit_shift",
    "frozen",
    "load_shift",
    "read_shift",
    "MMDShift",
    "mean_table",
    "median_bandwidth",
    "mmd2",
    "multiscale_bandwidths",
    "plot_mmd_curve",
    "predict_adapted",
    "read_cells",
    "read_perturbation_list",
    "resolve_files",
    "write_shift",
    "select_cells",
    "source_embeddings",
]
