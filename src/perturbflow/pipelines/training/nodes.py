"""Nodes of the ``training`` pipeline: thin wrappers over :mod:`perturbflow.models`."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import pandas as pd

from perturbflow.datasets.model_store import StoredModels
from perturbflow.evaluation.benchmark import PREDICTION_SEP, split_names
from perturbflow.exceptions import InputError
from perturbflow.models.inference.predict import predict_heldout
from perturbflow.models.inference.quality import control_offset_report
from perturbflow.models.inference.validation import model_validation_scores
from perturbflow.models.runs.members import check_ensemble, member_names, member_trainings
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.models.training.train import train_st
from perturbflow.params import ColumnsParams, EvaluationParams, LoaderParams, TrainingParams
from perturbflow.splits.split_data import SplitData, split_data_from_file

logger = logging.getLogger(__name__)

MODEL_NAME = "st"


def _split(
    adata: ad.AnnData, split_table: pd.DataFrame, name: str, genes: list[str], loader: LoaderParams
) -> SplitData:
    return split_data_from_file(
        adata,
        split_table,
        name,
        genes=genes,
        loader=loader,
    )


def _check_splits(split_table: pd.DataFrame, training: TrainingParams) -> None:
    check_ensemble(training.ensemble)
    known = split_names(split_table)
    unknown = [s for s in training.splits if s not in known]
    if unknown:
        raise InputError(
            f"training.splits names {unknown}, which are not splits of the split table "
            f"({known}); see parameters_splits.yml."
        )
    for name in training.splits:
        test = (split_table[name] == "test") & ~split_table["is_control"].astype(bool)
        if not test.any():
            raise InputError(
                f"Split {name!r} of the split table has no test perturbation: its model "
                "would predict nothing. Hold out test perturbations in its split config "
                "(parameters_splits.yml) and rerun the splits pipeline."
            )


def train_models(
    preprocessed_adata: ad.AnnData,
    split_table: pd.DataFrame,
    hvg_genes: list[str],
    columns: ColumnsParams,
    loader: LoaderParams,
    training: TrainingParams,
    st_training: Path,
) -> dict[str, Path]:
    """Train (resume, or reuse) the ST model(s) of each split in ``training.splits``.

    With ``training.ensemble`` K > 1, K networks per split with seeds ``training.seed``,
    ``+1``, ... (:mod:`perturbflow.models.runs.members` names them); each is resumed or
    reused on its own.

    Args:
        preprocessed_adata: The preprocessed screen (obs; the matrix is read by rows).
        split_table: The per-cell split table.
        hvg_genes: Names of the loader's expression space.
        columns: Column names of the design.
        loader: Sentence length, batch size, pairing, workers.
        training: Model, loss, optimiser and trainer settings.
        st_training: The work folder (catalog): ``<split>/`` (and ``<split>.seed<s>/`` for
            an ensemble's other members) holds each run's checkpoints while it trains, so a
            rerun resumes there.

    Returns:
        The finished run folder of each run, by name: the ``st_models`` store saves its
        model files (the runs are read from the store by the nodes that use them).
    """
    _check_splits(split_table, training)
    runs = {}
    for name in training.splits:
        split = _split(preprocessed_adata, split_table, name, hvg_genes, loader)
        members = member_trainings(name, training)
        for k, (member, member_training) in enumerate(members):
            if len(members) > 1:
                logger.info(
                    "ST %s: network %d of %d (seed %d)",
                    name,
                    k + 1,
                    len(members),
                    member_training.seed,
                )
            run_dir = Path(st_training) / member
            train_st(
                split, columns=columns, loader=loader, training=member_training, run_dir=run_dir
            )
            runs[member] = run_dir
    return runs


def _split_runs(st_models: StoredModels, name: str, training: TrainingParams) -> list[TrainedRun]:
    """The runs of split ``name``'s ensemble (one run when ``training.ensemble`` is 1)."""
    return [
        st_models.named_by(member, "training.splits and training.ensemble")
        for member in member_names(name, training.seed, training.ensemble)
    ]


def predict_st_models(
    st_models: StoredModels,
    preprocessed_adata: ad.AnnData,
    split_table: pd.DataFrame,
    hvg_genes: list[str],
    columns: ColumnsParams,
    loader: LoaderParams,
    training: TrainingParams,
    evaluation: EvaluationParams,
) -> tuple[dict[str, ad.AnnData], pd.DataFrame, dict, dict[str, pd.DataFrame]]:
    """Predict the test perturbations of ``training.splits`` from control cells.

    Each split's model is read from the ``st_models`` store (other splits' models there,
    from earlier runs, are left alone); with ``training.ensemble`` > 1 its networks' cells
    are averaged (the control offset report is the first network's). The validation
    perturbations are predicted too and scored (what the evaluation's ``perturbflow``
    predictor chooses on); their cells are not kept.

    Returns:
        Predictions keyed ``<split>/st`` (cell-eval's form), how each perturbation was
        encoded (``st_prediction_sources.csv``), per split the offset the model puts
        on control cells given the control label (``st_quality.json``) and the
        validation scores keyed ``<split>/st``.
    """
    predictions, sources, quality, validation = {}, [], {}, {}
    for name in training.splits:
        runs = _split_runs(st_models, name, training)
        run = runs[0]
        data = _split(preprocessed_adata, split_table, name, hvg_genes, loader).data
        predicted, encoded = predict_heldout(runs, data, columns, seed=evaluation.seed)
        predictions[f"{name}{PREDICTION_SEP}{MODEL_NAME}"] = predicted
        sources.append(encoded.assign(split=name, predictor=MODEL_NAME, networks=len(runs)))
        validation[f"{name}{PREDICTION_SEP}{MODEL_NAME}"] = model_validation_scores(
            runs, data, split=name, predictor=MODEL_NAME, seed=evaluation.seed
        )
        quality[name] = control_offset_report(run, data, columns, seed=evaluation.seed)
        quality[name]["run_dir"] = str(run.path)
        quality[name]["ensemble"] = [str(r.path) for r in runs]
        logger.info(
            "ST %s: predicted %d test perturbations; control offset %.3f of the real deltas",
            name,
            len(data.heldout_keys("test")),
            quality[name]["mean_relative_control_offset"],
        )
    table = pd.concat(sources, ignore_index=True) if sources else pd.DataFrame()
    return predictions, table, quality, validation
