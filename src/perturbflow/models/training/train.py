"""Train an ST model on one named split.

The library function behind ``kedro run --pipelines training`` and ``perturbflow train``
(multi-GPU / multi-node DDP).

:func:`train_st` validates everything before the first step (columns, split, batch column,
output space), writes the run directory (:mod:`perturbflow.models.runs.run_dir`), trains with a
Lightning ``Trainer`` (AdamW, warmup + cosine, gradient clipping, validation
pearson_delta every N steps, checkpoints every N steps plus ``last`` and ``best``, mixed
precision on GPUs that support it) and saves the weights used for inference.

Rerunning with the same configuration reuses a finished run, and resumes an interrupted
one from ``checkpoints/last.ckpt`` (Lightning restores weights, optimiser, schedule and
step). A run directory that holds a run with another configuration is moved aside to
``<run>.previous-<time>``, never overwritten.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path
from perturbflow.loading.categories import CategoryMap
from perturbflow.loading.datamodule import PerturbationDataModule
from perturbflow.loading.row_matrix import matrix_sha256
from perturbflow.models.components.dose import check_interpolation, interpolation_rate
from perturbflow.models.components.inputs import PerturbationInputs
from perturbflow.models.components.network import Architecture, resolve_size
from perturbflow.models.components.prior import ResponsePrior, prior_table
from perturbflow.models.runs.run_dir import (
    CONFIG,
    SUMMARY,
    WEIGHTS,
    config_digest,
    save_weights,
    write_json,
    write_yaml,
)
from perturbflow.models.st_module import STModule, architecture_dict
from perturbflow.models.training.fit_loop import (
    fit_run,
    prepare_run_dir,
    reused_summary,
    start,
)
from perturbflow.models.training.rescope import rescoped_run
from perturbflow.models.training.trainer import check_ema_decay, check_trainer_settings
from perturbflow.params import ColumnsParams, LoaderParams, TrainingParams
from perturbflow.splits.effects import training_effects
from perturbflow.splits.split_data import SplitData, shared_reader

logger = logging.getLogger(__name__)

# Settings that change how a run is executed, not what one network learns (``ensemble``:
# how many are trained, each with its own seed): a run that differs only in these is the
# same run (it can be resumed or reused).
EXECUTION_KEYS = (
    "splits",
    "progress_bar",
    "cpu_threads",
    "resume",
    "logger",
    "ensemble",
    "keep_step_checkpoints",
)


def _check(split: SplitData, columns: ColumnsParams, training: TrainingParams) -> None:
    model = training.model
    check_ema_decay(training.ema_decay)
    if model.batch_encoder and columns.batch_col is None:
        raise InputError(
            "training.model.batch_encoder is true but columns.batch_col is null: name the "
            "batch column (e.g. gem_group, plate) or switch the batch encoder off."
        )
    if model.batch_encoder and columns.batch_col not in split.obs.columns:
        raise InputError(
            f"Batch column {columns.batch_col!r} is not in obs of {split.path} "
            f"(columns: {list(split.obs.columns)})."
        )
    if model.output_space == "embedding" and model.inputs.target_gene:
        raise InputError(
            "training.model.inputs.target_gene needs gene names, but output_space is "
            "'embedding': set target_gene to false."
        )
    labels = split.split_table[split.split_name]
    perturbed = ~split.split_table["is_control"].astype(bool)
    if not ((labels == "train") & perturbed).any():
        raise InputError(f"Split {split.split_name!r} has no perturbed training cells.")
    check_trainer_settings(training, "training")


def _has_val(split: SplitData) -> bool:
    table = split.split_table
    return bool(((table[split.split_name] == "val") & ~table["is_control"].astype(bool)).any())


def key_table(dm: PerturbationDataModule) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The ``(context, perturbation)`` keys of a run's cells and their row per index pair.

    Returns:
        The keys (in the order of the module's tables) and ``[n_contexts,
        n_perturbations]`` rows into them (``-1``: not a key of the split).
    """
    vocab = dm.vocabulary
    pairs = dm.cells[["context", "perturbation"]].astype(str).drop_duplicates()
    keys = [(c, p) for c, p in pairs.itertuples(index=False)]
    c_index = {c: i for i, c in enumerate(vocab.contexts)}
    p_index = {p: i for i, p in enumerate(vocab.perturbations)}
    key_index = np.full((len(vocab.contexts), len(vocab.perturbations)), -1, dtype=np.int64)
    for row, (c, p) in enumerate(keys):
        key_index[c_index[c], p_index[p]] = row
    return keys, key_index


def build_module(
    split: SplitData,
    dm: PerturbationDataModule,
    training: TrainingParams,
    columns: ColumnsParams,
) -> tuple[STModule, PerturbationInputs, Architecture, pd.DataFrame, ResponsePrior | None]:
    """The LightningModule, its perturbation inputs, architecture, key table and prior."""
    model = training.model
    effects = training_effects(split.data)
    inputs = PerturbationInputs.fit(
        split.data, effects, model.inputs, control_label=columns.control_label
    )
    check_interpolation(interpolation_rate(model.inputs), inputs.dose)
    keys, key_index = key_table(dm)
    encoded = inputs.encode(keys, split.data)
    sizes = resolve_size(
        model.size, hidden_dim=model.hidden_dim, n_layers=model.n_layers, n_heads=model.n_heads
    )
    n_batches = len(dm.design.batch_labels or []) if model.batch_encoder else 0
    arch = Architecture(
        input_dim=len(split.genes),
        output_dim=len(split.genes),
        decoder_dim=len(split.all_genes) if model.output_space == "all" else 0,
        perturbation_dim=inputs.dim,
        n_batches=n_batches,
        dropout=model.dropout,
        predict_residual=model.predict_residual,
        direct_path=model.direct_path,
        **sizes,
    )
    prior, table, prior_sources = prior_table(
        split.data,
        effects,
        keys,
        kind=model.response_prior,
        settings=model.prior,
        control_label=columns.control_label,
        seed=training.seed,
        scope=model.prior_scope,
    )
    module = STModule(
        architecture_dict(arch),
        dataclasses.asdict(training.loss),
        dataclasses.asdict(training.optimizer),
        training.max_steps,
        identity_dropout=model.inputs.identity_dropout,
        pert_table=encoded.vectors,
        key_index=key_index,
        identity_mask=encoded.identity_mask,
        prior_table=table,
    )
    sources = encoded.table(prior=prior_sources)
    return module, inputs, arch, sources, prior


def _resolved_config(
    split: SplitData,
    columns: ColumnsParams,
    loader: LoaderParams,
    training: TrainingParams,
    arch: Architecture,
) -> dict[str, Any]:
    train = dataclasses.asdict(training)
    learned = {k: v for k, v in train.items() if k not in EXECUTION_KEYS}
    if learned.get("ema_decay") is None:
        # recorded only when set: runs from before the option keep their digest (reused)
        learned.pop("ema_decay", None)
    return {
        "format": "perturbflow.STRun",
        "version": 1,
        "split": split.split_name,
        "columns": dataclasses.asdict(columns),
        "loader": dataclasses.asdict(loader),
        "training": learned,
        "architecture": architecture_dict(arch),
        "data": {"path": str(split.path), **data_identity(split)},
    }


def data_identity(split: SplitData) -> dict[str, Any]:
    """What a run learns from: the content of its matrix and split labels, not the file.

    The preprocessing pipeline rewrites the same bytes on every ``kedro run``: a file's
    mtime must not force a retraining. The matrix is hashed in blocks (bounded memory).
    """
    table = split.split_table[[split.split_name, "perturbation", "is_control"]]
    table_sha = pd.util.hash_pandas_object(table.astype(str), index=True).sum()
    return {
        "matrix_sha256": matrix_sha256(split.data.X, split.genes),
        "split_table_hash": str(int(table_sha) & (2**64 - 1)),
        "n_cells": int(len(split.obs)),
    }


def train_st(
    split: SplitData,
    *,
    columns: ColumnsParams,
    loader: LoaderParams,
    training: TrainingParams,
    run_dir: str | Path,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train (or resume, or reuse) the ST model of one split in ``run_dir``.

    Args:
        split: The split's data (:func:`split_data`).
        columns: Column names of the design.
        loader: Sentence length, batch size, pairing, workers.
        training: Model, loss, optimiser and trainer settings.
        run_dir: The run directory.
        callbacks: Extra Lightning callbacks (e.g. a monitor of the batches seen).

    Returns:
        The run summary (``run.json``): status, steps, wall time, throughput, best
        validation pearson_delta, which weights ``model.pt`` holds.

    Raises:
        InputError: Bad configuration or data, found before the first step.
        TrainingStopped: The training was stopped (SIGTERM, Ctrl-C) before ``max_steps``:
            rerun to resume it.
    """
    _check(split, columns, training)
    run = Path(run_dir)
    start(training)
    dm = sentence_data(
        split,
        columns,
        loader,
        output_space=training.model.output_space,
        dose_interpolation=interpolation_rate(training.model.inputs),
    )
    module, inputs, arch, sources, prior = build_module(split, dm, training, columns)
    config = _resolved_config(split, columns, loader, training, arch)
    # where the file lives is not what the model learns: a moved project reuses its runs
    identity = {**config, "data": {k: v for k, v in config["data"].items() if k != "path"}}
    digest = config_digest(identity)
    reused = reused_summary(run, digest, WEIGHTS) or rescoped_run(
        run, identity, config, digest, sources
    )
    if reused is not None:
        return reused
    resume_from = prepare_run_dir(run, digest, training.resume)
    if rank_zero_only.rank == 0:
        write_run_files(run, config, digest, split, dm, inputs, sources, columns, prior=prior)
    fit = fit_run(
        module,
        dm,
        run=run,
        settings=training,
        resume=resume_from,
        has_val=_has_val(split),
        callbacks=callbacks,
        what="Training",
        describe=(
            f"ST ({training.model.size}, hidden {arch.hidden_dim}, {arch.n_layers} layers) "
            f"on split {split.split_name}"
        ),
    )
    summary = {
        **fit.summary(digest, split.split_name),
        "n_parameters": int(sum(p.numel() for p in module.net.parameters())),
    }
    if rank_zero_only.rank == 0:
        save_weights(module.net, run / WEIGHTS)
        write_json(run / SUMMARY, summary)
    logger.info(
        "ST %s: %d steps in %.0f s (%s cells/s), weights %s, best val pearson_delta %s.",
        split.split_name,
        fit.steps,
        fit.wall_s,
        summary["train_cells_per_s"],
        fit.weights,
        fit.best_score,
    )
    return summary


def sentence_data(
    split: SplitData,
    columns: ColumnsParams,
    loader: LoaderParams,
    *,
    output_space: str,
    dose_interpolation: float = 0.0,
) -> PerturbationDataModule:
    """The cell sentences a training or finetuning run of ``split`` reads.

    The loader reuses the split's reader of its file (:func:`shared_reader`); with
    ``output_space='all'`` the sentences also carry the all-gene ``X`` rows.
    """
    return PerturbationDataModule(
        split.path,
        split.obs,
        split.split_table,
        split.split_name,
        columns,
        loader,
        all_key="X" if output_space == "all" else None,
        dose_interpolation=dose_interpolation,
        reader=shared_reader(split, loader),
    )


def write_run_files(
    run: Path,
    config: dict[str, Any],
    digest: str,
    split: SplitData,
    dm: PerturbationDataModule,
    inputs: PerturbationInputs,
    sources: pd.DataFrame,
    columns: ColumnsParams,
    *,
    prior: ResponsePrior | None = None,
    config_name: str = CONFIG,
) -> None:
    """Write a (training or finetuning) run's configuration, gene list, maps, inputs, prior.

    The summary is marked ``running`` with the configuration's digest; ``config_name`` is
    ``config.yaml`` for a training run (a finetuning writes its own file name).
    """
    run.mkdir(parents=True, exist_ok=True)
    write_yaml(run / config_name, config)
    write_json(run / "genes.json", split.genes)
    if config["architecture"]["decoder_dim"]:
        write_json(run / "all_genes.json", split.all_genes)
    CategoryMap(dm.vocabulary.perturbations, name="perturbations").to_json(
        run / "perturbation_map.json"
    )
    CategoryMap(dm.vocabulary.contexts, name="contexts").to_json(run / "context_map.json")
    if columns.batch_col and dm.design.batch_labels is not None:
        CategoryMap(dm.design.batch_labels, name="batches").to_json(run / "batch_map.json")
    inputs.save(run)
    if prior is not None:
        prior.save(run)
    with atomic_path(run / "perturbation_sources.csv") as tmp:
        sources.to_csv(tmp, index=False)
    write_json(run / SUMMARY, {"status": "running", "config_sha256": digest})
