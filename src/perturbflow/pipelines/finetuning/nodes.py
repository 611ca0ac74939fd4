"""Nodes of the ``finetuning`` pipeline: thin wrappers over the finetuning library.

See :mod:`perturbflow.models.training.finetune`.
"""

from __future__ import annotations

import logging

import anndata as ad
import pandas as pd

from perturbflow.evaluation.benchmark import PREDICTION_SEP, split_names
from perturbflow.exceptions import InputError
from perturbflow.models.inference.predict import predict_heldout
from perturbflow.models.runs.adapter import load_finetuned
from perturbflow.models.training.finetune import FinetuningParams, finetune_st
from perturbflow.params import ColumnsParams, EvaluationParams, LoaderParams
from perturbflow.splits.split_data import split_data_from_file

logger = logging.getLogger(__name__)


def finetune_model(
    preprocessed_adata: ad.AnnData,
    split_table: pd.DataFrame,
    hvg_genes: list[str],
    columns: ColumnsParams,
    loader: LoaderParams,
    finetuning: FinetuningParams,
) -> dict:
    """Finetune (resume, or reuse) ``finetuning.init_from`` on ``finetuning.split``.

    Returns:
        The finetuned run's directory, split, predictor name and summary
        (``06_models/finetuned/runs.json``).
    """
    known = split_names(split_table)
    if finetuning.split not in known:
        raise InputError(
            f"finetuning.split {finetuning.split!r} is not a split of the split table "
            f"({known}); add it to parameters_splits.yml."
        )
    split = split_data_from_file(
        preprocessed_adata,
        split_table,
        finetuning.split,
        genes=hvg_genes,
        loader=loader,
    )
    summary = finetune_st(
        split, columns=columns, loader=loader, finetuning=finetuning, run_dir=finetuning.run_dir
    )
    return {
        "run_dir": finetuning.run_dir,
        "split": finetuning.split,
        "predictor": finetuning.predictor,
        **summary,
    }


def predict_finetuned(
    finetuned_run: dict,
    preprocessed_adata: ad.AnnData,
    split_table: pd.DataFrame,
    hvg_genes: list[str],
    columns: ColumnsParams,
    loader: LoaderParams,
    evaluation: EvaluationParams,
) -> tuple[dict[str, ad.AnnData], pd.DataFrame]:
    """Predict the split's test perturbations from control cells with the finetuned model.

    Returns:
        The predictions keyed ``<split>/<predictor>`` (cell-eval's form, scored by the
        evaluation pipeline beside the baselines) and how each perturbation was encoded.
    """
    name, predictor = finetuned_run["split"], finetuned_run["predictor"]
    run = load_finetuned(finetuned_run["run_dir"])
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
    predictions = {f"{name}{PREDICTION_SEP}{predictor}": predicted}
    return predictions, encoded.assign(split=name, predictor=predictor)
