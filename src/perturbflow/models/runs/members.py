"""Seed ensembles: the runs whose predictions a split averages (``training.ensemble``).

A split's ensemble is ``training.ensemble`` networks trained on the same data and settings
with seeds ``seed``, ``seed + 1``, ...; each is an ordinary run folder. The first keeps the
split's name (so a single network, the default, is where it always was, and finetuning,
adaptation and ``perturbflow infer --run`` read it), the others are ``<split>.seed<s>``::

    06_models/st/fewshot/          seed 0 (training.seed)
    06_models/st/fewshot.seed1/    seed 1
    06_models/st/fewshot.seed2/    seed 2

Their predictions are averaged cell by cell, each member predicting from the same control
cells (:func:`perturbflow.models.inference.predict.predict_ensemble`). Averaging K seeds'
networks is the cheapest variance reduction a small-data model gets; the validation figures
that set the option's documented trade-off are in docs/model.md.
"""

from __future__ import annotations

import dataclasses

from perturbflow.exceptions import InputError
from perturbflow.params import TrainingParams

MEMBER_SEP = ".seed"


def check_ensemble(size: int) -> None:
    """Refuse an ensemble of fewer than one network, before any training starts."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(
            f"training.ensemble is {size!r}: the number of networks trained per split "
            "must be an integer of at least 1 (1: one network)."
        )


def member_seeds(seed: int, size: int) -> list[int]:
    """The training seeds of an ensemble of ``size`` networks starting at ``seed``."""
    check_ensemble(size)
    return [seed + k for k in range(size)]


def member_names(split: str, seed: int, size: int) -> list[str]:
    """The run names (store keys, work sub-folders) of a split's ensemble, first first.

    Args:
        split: The split's name.
        seed: ``training.seed``: the first member's seed.
        size: ``training.ensemble``.

    Returns:
        ``[split, f"{split}.seed{seed + 1}", ...]``.
    """
    seeds = member_seeds(seed, size)
    return [split] + [f"{split}{MEMBER_SEP}{s}" for s in seeds[1:]]


def member_trainings(split: str, training: TrainingParams) -> list[tuple[str, TrainingParams]]:
    """Each network of split ``split``'s ensemble: its run name and its training settings.

    The settings are ``training`` with the member's seed (``training.seed``, ``+1``, ...);
    what the training pipeline, ``perturbflow train`` and the benchmarks each train.
    """
    names = member_names(split, training.seed, training.ensemble)
    seeds = member_seeds(training.seed, training.ensemble)
    return [
        (name, dataclasses.replace(training, seed=seed))
        for name, seed in zip(names, seeds, strict=True)
    ]
