"""Build every baseline's predictions for every named split and score them with cell-eval.

These two functions are what the Kedro ``evaluation`` pipeline wraps; a notebook user can
call them directly with an AnnData, a split table and typed params.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import NamedTuple

import anndata as ad
import pandas as pd

from perturbflow.baselines.linear import predict_linear_with, real_deltas, select_and_fit_linear
from perturbflow.baselines.simple import (
    EffectPredictor,
    Key,
    PredictedEffect,
    predict_context_mean,
    predict_control,
    predict_perturbation_mean,
)
from perturbflow.evaluation.cells import predicted_adata, real_adata
from perturbflow.evaluation.scoring import (
    CEILING,
    add_normalised_scores,
    aggregate_metrics,
    score_predictions,
)
from perturbflow.evaluation.selection import SCORE_COLUMNS, validation_scores
from perturbflow.exceptions import InputError
from perturbflow.loading.h5reader import H5RowReader
from perturbflow.params import ColumnsParams, EvaluationParams
from perturbflow.predictions import shifted_mean_delta
from perturbflow.splits.data import SplitCells, split_cells, split_design
from perturbflow.splits.effects import TrainingEffects, training_effects
from perturbflow.splits.table import DESIGN_COLUMNS

logger = logging.getLogger(__name__)

SIMPLE_PREDICTORS: dict[str, EffectPredictor] = {
    "control": predict_control,
    "perturbation_mean": predict_perturbation_mean,
    "context_mean": predict_context_mean,
}
PREDICTION_SEP = "/"


def split_names(split_table: pd.DataFrame) -> list[str]:
    """The named splits of a split table (every column that is not a design column)."""
    return [c for c in split_table.columns if c not in DESIGN_COLUMNS]


def _predict(
    name: str,
    data: SplitCells,
    effects: TrainingEffects,
    keys: list[Key],
    params: EvaluationParams,
    reports: dict,
) -> dict[Key, PredictedEffect]:
    if name == "linear":
        model, evidence, report = select_and_fit_linear(
            data, effects, ranks=params.linear.ranks, ridge=params.linear.ridge
        )
        reports[data.split_name] = report
        return predict_linear_with(model, evidence, keys)
    return SIMPLE_PREDICTORS[name](data, effects, keys)


class BaselineRun(NamedTuple):
    """What :func:`build_baseline_predictions` returns.

    Attributes:
        predictions: ``"<split>/<predictor>"`` -> test predictions (or load functions).
        reals: Split -> the real held-out test cells (or load functions).
        sources: Which rule predicted each held-out test perturbation.
        linear_selection: The linear baseline's rank-selection report per split.
        validation: Every baseline's pearson_delta on each validation perturbation
            (:data:`perturbflow.evaluation.selection.SCORE_COLUMNS`).
    """

    predictions: dict
    reals: dict
    sources: pd.DataFrame
    linear_selection: dict
    validation: pd.DataFrame


def build_baseline_predictions(
    adata: ad.AnnData,
    split_table: pd.DataFrame,
    genes: list[str],
    columns: ColumnsParams,
    params: EvaluationParams,
    *,
    obsm_key: str | None = "X_hvg",
    progress: Callable[[str], None] | None = None,
    memory_budget_mib: float = 4096.0,
    preload: bool | None = None,
    lazy: bool = False,
) -> BaselineRun:
    """Cell-level test-set predictions of every baseline for every named split.

    Args:
        adata: Preprocessed AnnData in memory, or the cells of the preprocessed file
            (:class:`~perturbflow.datasets.H5adCells`, or a backed AnnData): the expression
            is then read by rows from the file, preloaded when it fits
            ``memory_budget_mib`` (one reader serves every split).
        split_table: Per-cell split table (one column per named split).
        genes: Names of the expression space's columns (the HVG list).
        columns: Column names of the design.
        params: Evaluation params (which predictors, the linear baseline's candidates).
        obsm_key: Expression space (``X_hvg`` by default, ``None`` for ``X``).
        progress: Optional callback receiving a line per finished step.
        memory_budget_mib: Preload budget of the file's matrix (``loader.memory_budget_mib``).
        preload: ``loader.preload`` (``None``: automatic under the budget).
        lazy: Return each cell-level AnnData as a function that builds it (a Kedro
            ``PartitionedDataset`` saves such partitions one at a time, so only one
            predictor's cells are in RAM at once) instead of the AnnData itself.

    Returns:
        ``predictions`` keyed ``"<split>/<predictor>"``, ``reals`` keyed by split,
        a table of prediction sources (which rule predicted each held-out perturbation),
        the linear baseline's rank-selection report per split and every baseline's
        validation scores (what the ``perturbflow`` predictor chooses on).

    Raises:
        InputError: If a split has no test perturbation.
    """
    predictions, reals, reports = {}, {}, {}
    source_rows, validation = [], []
    reader = None
    if not isinstance(adata, ad.AnnData) or adata.isbacked:
        reader = H5RowReader(
            adata.filename,
            key=obsm_key or "X",
            preload=preload,
            memory_budget_mib=memory_budget_mib,
        )
    for split in split_names(split_table):
        if reader is None:
            data = split_cells(adata, split_table, split, genes=genes, obsm_key=obsm_key)
        else:
            data = split_design(adata.obs_names, split_table, split, genes=genes, matrix=reader)
        effects = training_effects(data)
        keys = list(data.heldout_keys("test"))
        if not keys:
            raise InputError(f"Split {split!r} has no test perturbation to evaluate.")
        reals[split] = partial(real_adata, data, "test", columns)
        val_real = real_deltas(data, "val")
        for name in params.predictors:
            both = _predict(name, data, effects, [*keys, *val_real], params, reports)
            predicted = {k: both[k] for k in keys}
            val_pred = {  # the mean delta of the cells it would predict (clipped at zero)
                k: shifted_mean_delta(data.control_mean(k[0]), both[k].delta) for k in val_real
            }
            validation.append(validation_scores(split, name, val_pred, val_real))
            predictions[f"{split}{PREDICTION_SEP}{name}"] = partial(
                predicted_adata, data, "test", predicted, columns, seed=params.seed
            )
            source_rows += [
                {
                    "split": split,
                    "predictor": name,
                    "context": c,
                    "perturbation": p,
                    "source": e.source,
                }
                for (c, p), e in predicted.items()
            ]
            if progress:
                progress(f"{split}: {name} predicted {len(keys)} perturbations")
    if not lazy:
        predictions = {k: build() for k, build in predictions.items()}
        reals = {k: build() for k, build in reals.items()}
    if validation:
        scores = pd.concat(validation, ignore_index=True)
    else:
        scores = pd.DataFrame(columns=SCORE_COLUMNS)
    return BaselineRun(predictions, reals, pd.DataFrame(source_rows), reports, scores)


def materialise(value: ad.AnnData | Callable[[], ad.AnnData]) -> ad.AnnData:
    """Partitioned datasets hand over load functions; in-memory runs hand over objects."""
    return value() if callable(value) else value


def evaluate_predictions(
    predictions: Mapping[str, ad.AnnData | Callable[[], ad.AnnData]],
    reals: Mapping[str, ad.AnnData | Callable[[], ad.AnnData]],
    columns: ColumnsParams,
    params: EvaluationParams,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every prediction (and each split's ceiling) with cell-eval.

    Args:
        predictions: Cell-level predictions keyed ``"<split>/<predictor>"``.
        reals: Real held-out cells keyed by split.
        columns: Column names of the design.
        params: Evaluation params (profile, reference predictor, ceiling, threads).

    Returns:
        The aggregate table (one row per split and predictor, with the normalised
        score against the reference predictor) and the per-perturbation table.
    """
    frames = []
    order = {name: i for i, name in enumerate(params.predictors)}
    keys = sorted(
        predictions,
        key=lambda k: (k.split(PREDICTION_SEP)[0], order.get(k.split(PREDICTION_SEP)[1], 99)),
    )
    for split in sorted(reals):
        real = materialise(reals[split])
        split_keys = [k for k in keys if k.split(PREDICTION_SEP)[0] == split]
        logger.info(
            "Scoring split %s with cell-eval (%s profile): %d predictor(s)%s...",
            split,
            params.profile,
            len(split_keys),
            " and the ceiling" if params.ceiling else "",
        )
        for key in split_keys:
            predictor = key.split(PREDICTION_SEP, 1)[1]
            logger.info("Scoring %s on split %s...", predictor, split)
            frame = score_predictions(
                real,
                materialise(predictions[key]),
                columns,
                profile=params.profile,
                num_threads=params.num_threads,
                seed=params.seed,
            )
            frames.append(frame.assign(split=split, predictor=predictor))
        if params.ceiling:
            frame = score_predictions(
                real,
                None,
                columns,
                profile=params.profile,
                num_threads=params.num_threads,
                seed=params.seed,
            )
            frames.append(frame.assign(split=split, predictor=CEILING))
    per_perturbation = pd.concat(frames, ignore_index=True)
    ids = ["split", "predictor", "context", "perturbation"]
    per_perturbation = per_perturbation[ids + [c for c in per_perturbation.columns if c not in ids]]
    agg = add_normalised_scores(
        aggregate_metrics(per_perturbation), reference=params.reference_predictor
    )
    return agg, per_perturbation
