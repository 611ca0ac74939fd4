"""The response prior: what the ST model predicts before it has learned anything specific.

Every perturbed sentence's predicted delta starts from a prior delta for its
``(context, perturbation)``; the network, whose output head starts at zero, learns the
perturbation's *departure* from it. A model that learns nothing scores exactly its prior.
``training.model.response_prior`` picks it:

* ``none``: no prior (the network predicts the whole delta);
* ``context_mean``: the context's mean training response (the ``perturbation_mean``
  baseline of :mod:`perturbflow.baselines.simple`);
* ``context_transfer``: the perturbation's mean response in the other training contexts
  where it was seen (the ``context_mean`` baseline), else the context's mean;
* ``linear``: the linear baseline (:mod:`perturbflow.baselines.linear`: additive doubles,
  other contexts' responses and target signatures through ridge maps, its rank chosen on
  validation perturbations) in a context with training perturbations, and the context
  transfer in a held-out context (zero-shot), where the linear model has no own responses.

**Scope** (``training.model.prior_scope``): ``all`` adds the prior to every perturbed
sentence, in training and at inference (the network learns each perturbation's departure);
``informed`` and ``out_of_context`` train the network without it and, at inference,
predict some keys at their prior (:mod:`perturbflow.models.components.prior_scope` says
which; :func:`perturbflow.models.inference.predict.predict_cells`).

**Cross-fitting.** A training key's prior must be as imperfect as a test key's, or the
network learns to trust it too much. Training keys are cut into ``prior.folds`` folds
(seeded); each fold's priors come from the training effects *without* that fold's keys
(the linear model's basis, maps and context means refitted), so no training key's prior
has seen its own cells. Every other key (validation, test, anything predicted later) gets
the prior fitted on all training keys. :func:`fit_response_prior` returns both;
:meth:`ResponsePrior.save` writes the fitted linear model and the training keys'
out-of-fold priors into the run folder (``response_prior.json`` + ``.npz``, no pickles), and
inference recomputes a key's prior from them, the run's saved training effects and the
cells it predicts from (a target signature reads the context's control cells).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perturbflow.baselines.linear import (
    LinearModel,
    fit_linear,
    predict_linear_with,
    select_and_fit_linear,
)
from perturbflow.baselines.simple import FALLBACK, predict_context_mean
from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path
from perturbflow.models.components.prior_scope import check_scope, keys_at_prior
from perturbflow.perturbations import components
from perturbflow.splits.data import SplitCells
from perturbflow.splits.effects import TrainingEffects
from perturbflow.splits.evidence import Evidence

logger = logging.getLogger(__name__)

Key = tuple[str, str]

PRIORS = ("none", "context_mean", "context_transfer", "linear")
PRIOR_JSON = "response_prior.json"
PRIOR_NPZ = "response_prior.npz"


@dataclass(frozen=True)
class PriorSettings:
    """How a prior is fitted (``training.model.prior``).

    Attributes:
        folds: Folds over the training keys for their out-of-fold priors (>= 2).
        ranks: Candidate ranks of the linear prior (chosen on validation perturbations).
        ridge: Ridge penalty of the linear prior.
        seed: Seed of the fold assignment.
    """

    folds: int = 5
    ranks: tuple[int, ...] = (2, 4, 8, 16, 32)
    ridge: float = 0.1
    seed: int = 0


@dataclass
class ResponsePrior:
    """A fitted response prior: its kind, the linear model and the out-of-fold table.

    Attributes:
        kind: One of :data:`PRIORS` but ``none``.
        effects: The training effects it was fitted on (the run's ``training_effects``).
        control_label: The control's label (its prior is zero).
        model: The linear model fitted on all training keys (``linear`` only).
        out_of_fold: A training key's prior fitted without its fold.
        report: What was fitted (rank, folds, sources), JSON-serialisable.
    """

    kind: str
    effects: TrainingEffects
    control_label: str
    model: LinearModel | None = None
    out_of_fold: dict[Key, np.ndarray] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def deltas(
        self, keys: Sequence[Key], data: SplitCells, *, out_of_fold: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """The prior delta of each key ``[n_keys, G]`` float32 and its source.

        Args:
            keys: ``(context, perturbation)`` pairs.
            data: Cells in the prior's genes (a target signature reads its controls).
            out_of_fold: Training keys get their out-of-fold prior (what training uses);
                otherwise every key gets the prior fitted on all training keys.
        """
        out = np.zeros((len(keys), self.effects.deltas.shape[1]), dtype=np.float32)
        sources = ["control"] * len(keys)
        rows = [r for r, k in enumerate(keys) if not _is_control(k, self.control_label)]
        if out_of_fold:
            for row in [r for r in rows if keys[r] in self.out_of_fold]:
                out[row], sources[row] = self.out_of_fold[keys[row]], "out_of_fold"
            rows = [r for r in rows if keys[r] not in self.out_of_fold]
        evidence = Evidence(data, self.effects) if self.kind == "linear" else None
        fitted = _priors(
            self.kind, data, self.effects, [keys[r] for r in rows], self.model, evidence
        )
        for row, (delta, source) in zip(rows, fitted, strict=True):
            out[row], sources[row] = delta, source
        return out, sources

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``response_prior.json`` and ``response_prior.npz`` (arrays only)."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"kind": self.kind, "report": self.report, "maps": []}
        if self.model is not None:
            arrays["basis"] = self.model.basis
            for i, (source, matrix) in enumerate(self.model.maps.items()):
                arrays[f"map_{i}"] = matrix
                meta["maps"].append(source)
            meta["rank"] = self.model.rank
            meta["n_fit_columns"] = self.model.n_fit_columns
        keys = sorted(self.out_of_fold)
        meta["out_of_fold_keys"] = [list(k) for k in keys]
        if keys:
            arrays["out_of_fold"] = np.vstack([self.out_of_fold[k] for k in keys])
        with atomic_path(os.path.join(directory, PRIOR_NPZ)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        with atomic_path(os.path.join(directory, PRIOR_JSON)) as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")


def _is_control(key: Key, control_label: str) -> bool:
    return not [c for c in components(key[1]) if c != control_label]


def _priors(
    kind: str,
    data: SplitCells,
    effects: TrainingEffects,
    keys: Sequence[Key],
    model: LinearModel | None,
    evidence: Evidence | None,
) -> list[tuple[np.ndarray, str]]:
    """Each perturbed key's prior delta and source under ``effects``."""
    own = set(effects.contexts())
    if kind == "context_mean":
        return [(effects.mean_delta(c), "context_mean") for c, _ in keys]
    # the context transfer is the context_mean baseline (its fallback: perturbation_mean);
    # a held-out context has nothing of its own for the linear model to map
    transfer = [k for k in keys if kind == "context_transfer" or k[0] not in own]
    moved = predict_context_mean(data, effects, transfer)
    linear = [k for k in keys if k not in moved]
    mapped = predict_linear_with(model, evidence, linear) if linear else {}
    out = []
    for key in keys:
        if key in moved:
            fallback = moved[key].source == FALLBACK
            out.append((moved[key].delta, "context_mean" if fallback else "context_transfer"))
        else:
            out.append((mapped[key].delta, f"linear:{mapped[key].source}"))
    return out


def check_kind(kind: str) -> None:
    """Raise ``ValueError`` for an unknown prior kind."""
    if kind not in PRIORS:
        raise ValueError(f"unknown response prior {kind!r}; expected one of {PRIORS}")


def fit_response_prior(
    data: SplitCells,
    effects: TrainingEffects,
    *,
    kind: str,
    control_label: str,
    settings: PriorSettings = PriorSettings(),
    cross_fit: bool = True,
) -> ResponsePrior | None:
    """Fit a prior on a split's training effects, with out-of-fold priors for training keys.

    Args:
        data: The split's cells (validation perturbations choose the linear rank; the
            controls give target signatures); no test cell is read.
        effects: The split's training effects.
        kind: One of :data:`PRIORS`; ``none`` returns ``None``.
        control_label: The control's label.
        settings: Folds, the linear model's candidate ranks and ridge, the fold seed.
        cross_fit: Fit the training keys' out-of-fold priors (a network trained with the
            prior needs them; one trained without it, any scope but ``all``, does not).

    Returns:
        The fitted prior, or ``None`` for ``kind='none'``.

    Raises:
        ValueError: An unknown ``kind``.
        InputError: Fewer than two folds.
    """
    check_kind(kind)
    if kind == "none":
        return None
    if settings.folds < 2:
        raise InputError(f"training.model.prior.folds is {settings.folds}; expected >= 2.")
    model, rank, evidence = None, None, None
    report: dict[str, Any] = {
        "kind": kind,
        "cross_fitted": cross_fit,
        "folds": settings.folds,
        "seed": settings.seed,
    }
    if kind == "linear":
        model, evidence, selection = select_and_fit_linear(
            data, effects, ranks=list(settings.ranks), ridge=settings.ridge
        )
        rank = model.rank
        report["linear"] = selection
    out_of_fold, n_folds = {}, 0
    if cross_fit:
        out_of_fold, n_folds = _cross_fit(
            kind, data, effects, control_label, settings, rank, evidence
        )
    report["n_out_of_fold_keys"] = len(out_of_fold)
    logger.info(
        "response prior %s of split %s: %d training keys cross-fitted over %d folds%s",
        kind,
        data.split_name,
        len(out_of_fold),
        n_folds,
        f", linear rank {rank}" if rank is not None else "",
    )
    return ResponsePrior(kind, effects, control_label, model, out_of_fold, report)


def _cross_fit(
    kind: str,
    data: SplitCells,
    effects: TrainingEffects,
    control_label: str,
    settings: PriorSettings,
    rank: int | None,
    evidence: Evidence | None,
) -> tuple[dict[Key, np.ndarray], int]:
    """Each training key's prior fitted without its fold, and the number of folds."""
    perturbed = [k for k in effects.keys if not _is_control(k, control_label)]
    order = np.random.default_rng(settings.seed).permutation(len(perturbed))
    folds = np.array_split(order, min(settings.folds, max(len(perturbed), 1)))
    out_of_fold: dict[Key, np.ndarray] = {}
    for fold in folds:
        held = {perturbed[i] for i in fold}
        if not held:
            continue
        kept = [i for i, k in enumerate(effects.keys) if k not in held]
        if not kept:
            for key in held:  # a single training key: nothing else to learn from
                out_of_fold[key] = np.zeros(effects.deltas.shape[1], dtype=np.float32)
            continue
        reduced = _without(effects, kept)
        fold_model, fold_evidence = None, None
        if kind == "linear":
            fold_evidence = evidence.with_effects(reduced)
            fold_model = fit_linear(fold_evidence, rank=rank, ridge=settings.ridge)
        keys = sorted(held)
        fitted = _priors(kind, data, reduced, keys, fold_model, fold_evidence)
        for key, (delta, _) in zip(keys, fitted, strict=True):
            out_of_fold[key] = delta.astype(np.float32)
    return out_of_fold, len(folds)


def _without(effects: TrainingEffects, rows: list[int]) -> TrainingEffects:
    return TrainingEffects(
        keys=[effects.keys[i] for i in rows],
        deltas=effects.deltas[rows],
        n_cells=effects.n_cells[rows],
        control_means=effects.control_means,
    )


def load_response_prior(
    directory: str | os.PathLike[str],
    kind: str,
    effects: TrainingEffects,
    control_label: str,
) -> ResponsePrior | None:
    """The prior of a run folder (``None`` for ``kind='none'``).

    A ``context_mean`` run written before the prior files existed needs none (its prior
    is the saved effects' context mean).

    Raises:
        InputError: A ``linear`` or ``context_transfer`` run without its prior files.
    """
    check_kind(kind)
    if kind == "none":
        return None
    path = Path(directory)
    if not (path / PRIOR_JSON).is_file():
        if kind == "context_mean":
            return ResponsePrior(kind, effects, control_label)
        raise InputError(
            f"{path} was trained with response_prior {kind!r} but has no {PRIOR_JSON}: "
            "the run is incomplete; retrain it."
        )
    meta = json.loads((path / PRIOR_JSON).read_text())
    with np.load(path / PRIOR_NPZ, allow_pickle=False) as arrays:
        model = None
        if "basis" in arrays:
            model = LinearModel(
                basis=arrays["basis"],
                maps={s: arrays[f"map_{i}"] for i, s in enumerate(meta["maps"])},
                rank=int(meta["rank"]),
                n_fit_columns=dict(meta["n_fit_columns"]),
            )
        keys = [tuple(k) for k in meta["out_of_fold_keys"]]
        table = arrays["out_of_fold"] if keys else np.zeros((0, effects.deltas.shape[1]))
        out_of_fold = {k: table[i] for i, k in enumerate(keys)}
    return ResponsePrior(meta["kind"], effects, control_label, model, out_of_fold, meta["report"])


def prior_table(
    data: SplitCells,
    effects: TrainingEffects,
    keys: Sequence[Key],
    *,
    kind: str,
    settings: Any,
    control_label: str,
    seed: int,
    scope: str = "all",
) -> tuple[ResponsePrior | None, np.ndarray | None, list[str]]:
    """Fit a prior for a training run and its per-key table (training keys out-of-fold).

    Args:
        data: The split's cells.
        effects: The split's training effects.
        keys: The keys of the run's key table.
        kind: ``training.model.response_prior``.
        settings: ``training.model.prior`` (folds, ranks, ridge).
        control_label: The control's label.
        seed: Seed of the fold assignment (the training seed).
        scope: ``training.model.prior_scope``; but with ``all`` the network trains without
            the prior (no table) and only the keys predicted at it name a prior source.

    Returns:
        The prior (``None`` for ``none``), the ``[n_keys, G]`` table the module adds to
        its predicted deltas (``None`` for ``none`` and a scope other than ``all``) and each
        key's prior source.
    """
    check_scope(scope)
    prior = fit_response_prior(
        data,
        effects,
        kind=kind,
        control_label=control_label,
        settings=PriorSettings(
            folds=settings.folds, ranks=tuple(settings.ranks), ridge=settings.ridge, seed=seed
        ),
        cross_fit=scope == "all",  # any other scope: the network trains without the prior
    )
    if prior is None:
        return None, None, ["none"] * len(keys)
    if scope != "all":
        return prior, None, keys_at_prior(prior, scope, effects, keys, data).sources
    table, sources = prior.deltas(keys, data, out_of_fold=True)
    return prior, table, sources
