"""The data side of finetuning: the new context's training cells, effects and inputs.

:func:`restrict_contexts` keeps the training cells of ``finetuning.contexts`` (the new
context's few perturbations), :func:`merge_effects` adds their training effects to the base
run's, and :func:`extend_inputs` gives the base run's perturbation encoder those effects and
new identity slots for components it never saw (appended, so the base columns keep their
meaning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from perturbflow.design import CONTEXT_SEP
from perturbflow.exceptions import InputError
from perturbflow.loading._messages import listed
from perturbflow.models.components.inputs import PerturbationInputs
from perturbflow.models.components.prior import PriorSettings, ResponsePrior, prior_table
from perturbflow.params import PriorParams
from perturbflow.splits.effects import TrainingEffects
from perturbflow.splits.split_data import SplitData


def restrict_contexts(split: SplitData, contexts: Sequence[str]) -> SplitData:
    """The split with training cells outside ``contexts`` relabelled ``unused``.

    Raises:
        InputError: A context that has no cell in the split.
    """
    if not contexts:
        return split
    cells = split.data.cells
    known = sorted(cells["context"].unique())
    unknown = [c for c in contexts if c not in known]
    if unknown:
        raise InputError(
            f"finetuning.contexts names {unknown}, not contexts of {split.path} "
            f"(dataset{CONTEXT_SEP}celltype: {listed(known)})."
        )
    outside = ~cells["context"].isin(list(contexts)).to_numpy()
    labels = cells["split"].astype(object).to_numpy().copy()
    labels[outside & (labels == "train")] = "unused"
    table = split.split_table.copy()
    column = table[split.split_name].astype(object).to_numpy().copy()
    # split_table and data.cells share the index (both come from the same obs)
    position = table.index.get_indexer(cells.index)
    column[position] = labels
    table[split.split_name] = column
    data = dataclasses.replace(split.data, cells=cells.assign(split=labels))
    return dataclasses.replace(split, split_table=table, data=data)


def merge_effects(base: TrainingEffects, new: TrainingEffects) -> TrainingEffects:
    """The base's training effects plus the finetuning's (its keys win)."""
    index = new.index()
    rows = [i for i, k in enumerate(base.keys) if k not in index]
    keys = [base.keys[i] for i in rows] + list(new.keys)
    deltas = np.vstack([base.deltas[rows], new.deltas]).astype(base.deltas.dtype)
    n_cells = np.concatenate([base.n_cells[rows], new.n_cells])
    return TrainingEffects(keys, deltas, n_cells, {**base.control_means, **new.control_means})


def extend_inputs(
    base: PerturbationInputs, effects: TrainingEffects, *, new_slots: bool
) -> tuple[PerturbationInputs, list[str]]:
    """The base's perturbation inputs with the finetuning's effects and new identity slots.

    New components (in the finetuning's training keys, not in the base vocabulary) are
    appended after the base vocabulary, so the base columns keep their meaning.
    """
    merged = merge_effects(base.effects, effects)
    new: list[str] = []
    if new_slots and base.params.identity:
        # the names the identity slots know: drug names without their doses in a dosed run
        seen = {c for _, p in effects.keys for c in base.component_names(p)}
        new = sorted(seen - set(base.vocabulary) - {base.control_label})
        if new and base.dose is not None and base.dose.uses_dose:
            raise InputError(
                f"The base run encodes doses (dose {base.dose.mode!r}); finetuning on drugs it "
                f"never saw ({', '.join(new)}) would need new dose columns as well, which is "
                "not supported: train a base run that includes them, or set "
                "finetuning.new_identity_slots: false (they are then predicted as unknown)."
            )
    inputs = dataclasses.replace(base, vocabulary=list(base.vocabulary) + new, effects=merged)
    return inputs, new


def refitted_prior(
    split: SplitData,
    base: Any,
    inputs: PerturbationInputs,
    keys: Sequence[tuple[str, str]],
    finetuning: Any,
    columns: Any,
) -> tuple[ResponsePrior | None, np.ndarray | None, list[str]]:
    """The base run's kind of prior, refitted on the finetuning split's training effects.

    The base's training keys plus the new context's few perturbations (``inputs.effects``):
    the new context's keys get priors from its own training perturbations (out-of-fold
    for those the finetuning trains on), not the base context's.
    """
    model = base.config["training"]["model"]
    # a base from before the option has no prior settings (and no prior that uses them)
    settings = PriorParams(**model["prior"]) if model.get("prior") else PriorSettings()
    return prior_table(
        split.data,
        inputs.effects,
        keys,
        kind=model.get("response_prior", "none"),
        settings=settings,
        control_label=columns.control_label,
        seed=finetuning.seed,
        scope=model.get("prior_scope", "all"),
    )
