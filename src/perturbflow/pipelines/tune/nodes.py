"""Node of the ``tune`` pipeline: a thin wrapper over :mod:`perturbflow.tuning`."""

from __future__ import annotations

import anndata as ad
import pandas as pd
import plotly.graph_objects as go

from perturbflow.datasets.model_store import StoredModels
from perturbflow.evaluation.benchmark import split_names
from perturbflow.exceptions import InputError
from perturbflow.models.training.finetune import FinetuningParams
from perturbflow.params import ColumnsParams, LoaderParams
from perturbflow.splits.split_data import split_data_from_file
from perturbflow.tuning import StudyStorage, TuneParams, tune_finetuning


def tune_finetuning_hyperparameters(
    st_models: StoredModels,
    tune_storage: StudyStorage,
    preprocessed_adata: ad.AnnData,
    split_table: pd.DataFrame,
    hvg_genes: list[str],
    columns: ColumnsParams,
    loader: LoaderParams,
    finetuning: FinetuningParams,
    tune: TuneParams,
) -> tuple[dict, pd.DataFrame, go.Figure, go.Figure, go.Figure]:
    """Run (or resume) the study of ``tune`` over ``finetuning``'s hyper-parameters.

    Args:
        st_models: The trained runs (catalog store); the sweep finetunes
            ``tune.base`` (else ``finetuning.base``).
        tune_storage: Where the study and its trials' runs live (catalog).
        preprocessed_adata: The preprocessed screen, opened backed.
        split_table: The per-cell split table.
        hvg_genes: Names of the loader's expression space.
        columns: Column names of the design.
        loader: Loader params.
        finetuning: The base finetuning config each trial varies.
        tune: Study, objective, search space, pruning and budget.

    Returns:
        The best trial's record (``best_params.json``), the trials table, and the
        optimisation history, parameter importances and parallel coordinates figures.

    Raises:
        InputError: The split to tune is not in the split table.
    """
    name = tune.split or finetuning.split
    if name not in split_names(split_table):
        raise InputError(
            f"tune.split / finetuning.split is {name!r}, not a split of the split table "
            f"({split_names(split_table)}); see parameters_splits.yml."
        )
    split = split_data_from_file(
        preprocessed_adata,
        split_table,
        name,
        genes=hvg_genes,
        loader=loader,
    )
    base_key = "tune.base" if tune.base else "finetuning.base"
    base = st_models.named_by(tune.base or finetuning.base, base_key)
    result = tune_finetuning(
        split, base, tune_storage, columns=columns, loader=loader, finetuning=finetuning, tune=tune
    )
    figures = result.figures
    return (
        result.best,
        result.trials,
        figures["history"],
        figures["importances"],
        figures["parallel"],
    )
