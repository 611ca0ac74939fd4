"""Finetune a trained ST run on a new context: LoRA through peft, or full finetuning.

The library function behind ``kedro run --pipelines finetuning`` (and the ``tune``
pipeline's objective). :func:`finetune_st` starts from a finished run (``base``),
extends its perturbation encoder with new identity slots for components the base never
trained (zero-initialised, always trained), adapts the network with LoRA on the chosen
target groups (:mod:`perturbflow.models.components.lora`) or trains every weight, and saves only
what was trained (:mod:`perturbflow.models.runs.adapter`) with the identity of the base run.

It reuses the training machinery of :mod:`perturbflow.models.training.train`: the same data module
(control pairing, sentences), :class:`~perturbflow.models.st_module.STModule` (losses
including the delta-aware terms, AdamW with warmup + cosine, validation
``val/pearson_delta``), checkpoints every N steps plus ``last`` and ``best``, resuming an
interrupted finetuning from ``checkpoints/last.ckpt`` and reusing a finished one with the
same configuration.

Seed 004's mistakes and what is done instead: predictions start from control cells (the
inference code); the loss can be delta-aware on sentence means (``loss``); the output
head is not adapted by default; the finetuning learning rate is its own parameter
(default an order of magnitude below training); validation pearson_delta picks the
weights kept.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from perturbflow.exceptions import InputError
from perturbflow.loading.datamodule import PerturbationDataModule
from perturbflow.models.components.lora import add_lora, check_targets, lora_config, with_slots
from perturbflow.models.components.network import Architecture
from perturbflow.models.runs.adapter import ADAPTER_FORMAT, FINETUNE_CONFIG, save_adapter
from perturbflow.models.runs.run_dir import (
    SUMMARY,
    TrainedRun,
    config_digest,
    write_json,
)
from perturbflow.models.st_module import STModule, architecture_dict
from perturbflow.models.training.finetune_data import (
    extend_inputs,
    refitted_prior,
    restrict_contexts,
)
from perturbflow.models.training.fit_loop import fit_run, prepare_run_dir, reused_summary, start
from perturbflow.models.training.train import (
    _has_val,
    data_identity,
    key_table,
    sentence_data,
    write_run_files,
)
from perturbflow.models.training.trainer import check_trainer_settings
from perturbflow.params import ColumnsParams, LoaderParams, TrainerParams
from perturbflow.splits.effects import training_effects
from perturbflow.splits.split_data import SplitData

logger = logging.getLogger(__name__)

_STRICT = ConfigDict(extra="forbid")

# how a finetuning is executed, not what it learns (a run differing only here is reused)
EXECUTION_KEYS = (
    "base",
    "split",
    "predictor",
    "progress_bar",
    "cpu_threads",
    "resume",
    "logger",
    "keep_step_checkpoints",
)


@dataclass(frozen=True, config=_STRICT)
class LoraParams:
    """LoRA settings (peft).

    Attributes:
        rank: Rank of the adapters.
        alpha: LoRA alpha (the update is scaled by ``alpha / rank``).
        dropout: Dropout on the adapters' input.
        targets: Module groups to adapt: ``attention`` (q/k/v/o of every layer), ``mlp``
            (feed-forward layers), ``perturbation_encoder``, ``basal_encoder``,
            ``output_head``, ``decoder``, ``direct_path``. Unknown names fail, listing the
            valid ones.
        basal_rank: Rank of the basal encoder's adapters (same ``alpha / rank`` scaling),
            or ``None`` for ``rank``.
    """

    rank: int
    alpha: float
    dropout: float
    targets: list[str]
    basal_rank: int | None


@dataclass(frozen=True, config=_STRICT)
class FinetuningParams(TrainerParams):
    """The ``finetuning`` params group.

    The trainer fields (loss, optimizer, max_steps, ..., resume) are
    :class:`~perturbflow.params.TrainerParams`'s; ``seed`` also seeds the adapters.
    Besides them:

    Attributes:
        base: The base run (a finished ``training`` run): its split name in the
            ``st_models`` store (the pipeline's; the library takes the loaded run).
        method: ``lora`` (adapters only, base weights frozen) or ``full`` (every weight).
        lora: LoRA settings (read when ``method`` is ``lora``).
        new_identity_slots: Give components the base never trained a new, zero-initialised
            identity slot (trained in both methods); ``False`` leaves them to the base's
            other inputs (evidence, features) or to "some perturbation".
        contexts: ``dataset.celltype`` contexts whose training cells are finetuned on;
            empty: every training cell of the split.
        identity_dropout: Probability of hiding a sentence's identity part.
        split: The named split to finetune on (the pipeline's; the library takes SplitData).
        predictor: Name of the finetuned model's predictions (``<split>/<predictor>``).
    """

    base: str
    method: Literal["lora", "full"]
    lora: LoraParams
    new_identity_slots: bool
    contexts: list[str]
    identity_dropout: float
    split: str
    predictor: str

    @property
    def run_name(self) -> str:
        """The finetuned run's key in the ``finetuned_models`` store: ``<split>-<method>``."""
        return f"{self.split}-{self.method}"


def _check(split: SplitData, base: TrainedRun, finetuning: FinetuningParams) -> None:
    if finetuning.method == "lora":
        check_targets(finetuning.lora.targets)
    check_trainer_settings(finetuning, "finetuning")
    if list(split.genes) != list(base.genes):
        raise InputError(
            f"The base run {base.path} was trained on other genes (genes.json, "
            f"{len(base.genes)}) than split {split.split_name!r} has ({len(split.genes)})."
        )
    labels = split.split_table[split.split_name]
    perturbed = ~split.split_table["is_control"].astype(bool)
    if not ((labels == "train") & perturbed).any():
        raise InputError(
            f"Split {split.split_name!r} has no perturbed training cells to finetune on "
            f"(finetuning.contexts: {finetuning.contexts})."
        )


def build_finetune_module(
    split: SplitData,
    dm: PerturbationDataModule,
    base: TrainedRun,
    finetuning: FinetuningParams,
    columns: ColumnsParams,
):
    """The module to finetune, its inputs, architecture, key table, LoRA model and meta.

    Returns:
        ``(module, inputs, arch, sources, lora_model_or_None, new_vocabulary, prior)``.
    """
    inputs, new = extend_inputs(
        base.inputs, training_effects(split.data), new_slots=finetuning.new_identity_slots
    )
    keys, key_index = key_table(dm)
    encoded = inputs.encode(keys, split.data)
    arch = dataclasses.replace(base.net.arch, perturbation_dim=inputs.dim)
    prior, table, prior_sources = refitted_prior(split, base, inputs, keys, finetuning, columns)
    module = STModule(
        architecture_dict(arch),
        dataclasses.asdict(finetuning.loss),
        dataclasses.asdict(finetuning.optimizer),
        finetuning.max_steps,
        identity_dropout=finetuning.identity_dropout,
        pert_table=encoded.vectors,
        key_index=key_index,
        identity_mask=encoded.identity_mask,
        prior_table=table,
    )
    n_base_identity = len(base.inputs.vocabulary) if base.inputs.params.identity else 0
    net = with_slots(base.net, n_base_identity, len(new))
    net.arch = arch
    lora = None
    if finetuning.method == "lora":
        lora = add_lora(net, _lora_config(net, finetuning))
    else:
        net.requires_grad_(True)
    module.net = net.train()
    sources = encoded.table(prior=prior_sources)
    return module, inputs, arch, sources, lora, new, prior


def _lora_config(net, finetuning: FinetuningParams):
    lp = finetuning.lora
    return lora_config(
        net,
        targets=lp.targets,
        rank=lp.rank,
        alpha=lp.alpha,
        dropout=lp.dropout,
        basal_rank=lp.basal_rank,
    )


def _resolved_config(
    split: SplitData,
    base: TrainedRun,
    columns: ColumnsParams,
    loader: LoaderParams,
    finetuning: FinetuningParams,
    arch: Architecture,
    new: list[str],
) -> dict[str, Any]:
    learned = {k: v for k, v in dataclasses.asdict(finetuning).items() if k not in EXECUTION_KEYS}
    if finetuning.method != "lora":
        learned.pop("lora")
    return {
        "format": "perturbflow.STFinetune",
        "version": 1,
        "split": split.split_name,
        "base": {"path": str(base.path), "digest": base.digest},
        "columns": dataclasses.asdict(columns),
        "loader": dataclasses.asdict(loader),
        "finetuning": learned,
        "architecture": architecture_dict(arch),
        "new_vocabulary": new,
        "data": data_identity(split),
    }


def finetune_st(
    split: SplitData,
    base: TrainedRun,
    *,
    columns: ColumnsParams,
    loader: LoaderParams,
    finetuning: FinetuningParams,
    run_dir: str | Path,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Finetune (or resume, or reuse) the trained run ``base`` on ``split``.

    Args:
        split: The split's data (:func:`perturbflow.splits.split_data.split_data_from_file`);
            its training cells (within ``finetuning.contexts``) are finetuned on, its
            validation perturbations pick the weights kept.
        base: The trained run to start from
            (:func:`~perturbflow.models.runs.run_dir.load_run`).
        columns: Column names of the design.
        loader: Sentence length, batch size, pairing, workers.
        finetuning: Method, LoRA, loss, optimiser and trainer settings.
        run_dir: The finetuned run directory.
        callbacks: Extra Lightning callbacks (e.g. an Optuna pruning callback monitoring
            ``val/pearson_delta``).

    Returns:
        The run summary (``run.json``): status, steps, wall time, throughput,
        ``best_val_pearson_delta`` (``None`` without validation perturbations), trainable
        and total parameter counts, the base run's digest.

    Raises:
        InputError: Bad configuration, base run or data, found before the first step.
        TrainingStopped: The finetuning was stopped before ``max_steps``: rerun to resume.
    """
    split = restrict_contexts(split, finetuning.contexts)
    _check(split, base, finetuning)
    run = Path(run_dir)
    start(finetuning)
    space = base.config["training"]["model"]["output_space"]
    dm = sentence_data(split, columns, loader, output_space=space)
    module, inputs, arch, sources, lora, new, prior = build_finetune_module(
        split, dm, base, finetuning, columns
    )
    config = _resolved_config(split, base, columns, loader, finetuning, arch, new)
    digest = config_digest(config | {"base": {"digest": base.digest}})
    reused = reused_summary(run, digest, "adapter.pt")
    if reused is not None:
        return reused
    resume_from = prepare_run_dir(run, digest, finetuning.resume)
    if rank_zero_only.rank == 0:  # under DDP every rank runs this; one writes the run
        write_run_files(
            run, config, digest, split, dm, inputs, sources, columns, config_name=FINETUNE_CONFIG
        )
        if prior is not None:  # refitted on this split (finetune_data.refitted_prior)
            prior.save(run)
    n_trainable = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    fit = fit_run(
        module,
        dm,
        run=run,
        settings=finetuning,
        resume=resume_from,
        has_val=_has_val(split),
        callbacks=callbacks,
        what="Finetuning",
        describe=(
            f"{base.path} ({finetuning.method}, {n_trainable} trainable parameters, "
            f"{len(new)} new identity slots) on split {split.split_name}"
        ),
    )
    summary = {
        **fit.summary(digest, split.split_name),
        "method": finetuning.method,
        "base_run": str(base.path),
        "base_digest": base.digest,
        "new_identity_slots": new,
        "n_trainable_parameters": int(n_trainable),
        "n_parameters": int(sum(p.numel() for p in module.net.parameters())),
    }
    if rank_zero_only.rank == 0:
        _save_finetuned(
            run, module, finetuning, base=base, arch=arch, lora=lora, new=new, digest=digest
        )
        write_json(run / SUMMARY, summary)
    logger.info(
        "Finetuned %s: %d steps in %.0f s, weights %s, best val pearson_delta %s.",
        run,
        fit.steps,
        fit.wall_s,
        fit.weights,
        fit.best_score,
    )
    return summary


def _save_finetuned(
    run: Path,
    module: STModule,
    finetuning: FinetuningParams,
    *,
    base: TrainedRun,
    arch: Architecture,
    lora: Any,
    new: list[str],
    digest: str,
) -> None:
    """Save only what finetuning changed (the trainable tensors) with its base run's digest."""
    state = {
        n: p.detach().cpu().clone() for n, p in module.net.named_parameters() if p.requires_grad
    }
    meta = {
        "format": ADAPTER_FORMAT,
        "version": 1,
        "method": finetuning.method,
        "lora": dataclasses.asdict(finetuning.lora) if finetuning.method == "lora" else None,
        "target_modules": sorted(lora.peft_config["default"].target_modules) if lora else None,
        "new_vocabulary": new,
        "n_base_identity": len(base.inputs.vocabulary) if base.inputs.params.identity else 0,
        "architecture": architecture_dict(arch),
        "base": {"path": str(base.path), "digest": base.digest},
        "config_sha256": digest,
    }
    save_adapter(run, state, meta)
