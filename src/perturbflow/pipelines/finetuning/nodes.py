"""Nodes of the ``finetuning`` pipeline: thin wrappers over the finetuning library.

See :mod:`perturbflow.models.training.finetune`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import pandas as pd

from perturbflow.datasets.model_store import StoredModels
from perturbflow.evaluation.benchmark import PREDICTION_SEP, split_names
from perturbflow.exceptions import InputError
from perturbflow.models.inference.predict import predict_heldout
from perturbflow.models.inference.validation import model_validation_scores
from perturbflow.models.training.finetune import FinetuningParams, finetune_st
from perturbflow.params import ColumnsParams, EvaluationParams, LoaderParams
from perturbflow.splits.split_data import split_data_from_file

logger = logging.getLogger(__name__)


def finetune_model(
    st_models: StoredModels,
    preprocessed_adata: ad.AnnData,
    split_table: pd.DataFrame,
    hvg_genes: list[str],
    columns: ColumnsParams,
    loader: LoaderParams,
    finetuning: FinetuningParams,
    finetuning_training: Path,
) -> dict[str, Path]:
    """Finetune (resume, or reuse) the trained run ``finetuning.base`` on ``finetuning.split``.

    Args:
        st_models: The trained runs (catalog store), keyed by split.
        preprocessed_adata: The preprocessed screen (obs; the matrix is read by rows).
        split_table: The per-cell split table.
        hvg_genes: Names of the loader's expression space.
        columns: Column names of the design.
        loader: Sentence length, batch size, pairing, workers.
        finetuning: Base, method, LoRA, loss, optimiser and trainer settings.
        finetuning_training: The work folder (catalog): the run's checkpoints while it
            trains, ``<split>-<method>/``, so that a rerun resumes.

    Returns:
        ``{<split>-<method>: the finished run folder}``: the ``finetuned_models`` store
        saves its files.
    """
    known = split_names(split_table)
    if finetuning.split not in known:
        raise InputError(
            f"finetuning.split {finetuning.split!r} is not a split of the split table "
            f"({known}); add it to parameters_splits.yml."
        )
    base = st_models.named_by(finetuning.base, "finetuning.base")
    split = split_data_from_file(
        preprocessed_adata,
        split_table,
        finetuning.split,
        genes=hvg_genes,
        loader=loader,
    )
    run_dir = Path(finetuning_training) / finetuning.run_name
    finetune_st(split, base, columns=columns, loader=loader, finetuning=finetuning, run_dir=run_dir)
    return {finetuning.run_name: run_dir}


def predict_finetuned(
    finetuned_models: StoredModels,
    preprocessed_adata: ad.AnnData,
    split_table: pd.DataFrame,
    hvg_genes: list[str],
    columns: ColumnsParams,
    loader: LoaderParams,
    finetuning: FinetuningParams,
    evaluation: EvaluationParams,
) -> tuple[dict[str, ad.AnnData], pd.DataFrame, dict[str, pd.DataFrame]]:
    """Predict the split's test perturbations from control cells with the finetuned model.

    Returns:
        The predictions keyed ``<split>/<predictor>`` (cell-eval's form, scored by the
        evaluation pipeline beside the baselines), how each perturbation was encoded and
        the model's scores on the split's validation perturbations (keyed the same; the
        evaluation's ``perturbflow`` predictor chooses on them).
    """
    name, predictor = finetuning.split, finetuning.predictor
    run = finetuned_models.named_by(finetuning.run_name, "finetuning.split + method")
    data = split_data_from_file(
        preprocessed_adata,
        split_table,
        name,
        genes=hvg_genes,
        loader=loader,
    ).data
    predicted, encoded = predict_heldout(run, data, columns, seed=evaluation.seed)
    logger.info(
        "Finetuned %s: predicted %d test perturbations of %s",
        predictor,
        len(data.heldout_keys("test")),
        name,
    )
    key = f"{name}{PREDICTION_SEP}{predictor}"
    scores = model_validation_scores(
        run, data, split=name, predictor=predictor, seed=evaluation.seed
    )
    return {key: predicted}, encoded.assign(split=name, predictor=predictor), {key: scores}
