"""Which keys a run trained without its prior predicts at the prior (``prior_scope``).

``training.model.prior_scope``:

* ``all``: the prior is added to every perturbed sentence, in training (cross-fitted) and
  at inference; the network learns each key's departure from it.
* ``out_of_context``: the network trains alone; at inference a key the network knows
  nothing of in its context (:func:`out_of_context_keys`) is predicted at its prior.
* ``informed`` (default): as ``out_of_context``, but only where the prior has evidence of
  its own for the key: a key out of context whose prior is the context's *average*
  response (the linear model's ``fallback:perturbation_mean``, a ``context_mean``) stays
  with the network, which predicts an unknown perturbation from the average too but cell
  by cell; and a combination not trained in its context whose prior is the additive model
  of its components trained there (the linear model's ``components`` source) is predicted
  at it, even though the network knows the components. Chosen on validation perturbations
  (``benchmarks/prior_rule.py``, docs/benchmarks.md "Which keys go to the prior").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from perturbflow.baselines.simple import FALLBACK
from perturbflow.exceptions import InputError
from perturbflow.perturbations import components, parse_perturbation
from perturbflow.splits.data import SplitCells
from perturbflow.splits.effects import TrainingEffects

Key = tuple[str, str]


class FittedPrior(Protocol):
    """What the rule reads of a prior (a ``prior.ResponsePrior``)."""

    control_label: str

    def deltas(self, keys: Sequence[Key], data: SplitCells) -> tuple[np.ndarray, list[str]]:
        """Each key's prior delta and source."""
        ...


SCOPES = ("all", "out_of_context", "informed")
KNOWN_RULES = ("any", "single", "every")
ADDITIVE_SOURCE = "linear:components"
NETWORK = "network"


def check_scope(scope: str) -> None:
    """Raise ``ValueError`` for an unknown prior scope."""
    if scope not in SCOPES:
        raise ValueError(f"unknown prior scope {scope!r}; expected one of {SCOPES}")


def _names(label: str) -> set[str]:
    """Component names of a label (doses dropped: another dose of a trained drug counts)."""
    try:
        return {c.name for c in parse_perturbation(label)}
    except InputError:
        return set(components(label))


def out_of_context_keys(
    effects: TrainingEffects, keys: Sequence[Key], control_label: str, *, rule: str = "any"
) -> list[bool]:
    """Per key: the network knows nothing specific of it in its context (control: ``False``).

    What "knows" means is ``rule``: ``any`` (some component of the key was trained in the
    context, alone or inside a combination; what both scopes use), ``single`` (some
    component was trained there as a single perturbation) or ``every`` (every component
    was). The last two were measured against ``any`` on validation perturbations and lost
    (``benchmarks/prior_rule.py``). Not known: a single trained only in other contexts, a
    perturbation never trained, any key of a held-out context.

    Raises:
        ValueError: An unknown ``rule``.
    """
    if rule not in KNOWN_RULES:
        raise ValueError(f"rule must be one of {KNOWN_RULES}, got {rule!r}")
    trained: dict[str, set[str]] = {}
    for context, perturbation in effects.keys:
        names = _names(perturbation) - {control_label}
        if rule == "any" or len(names) == 1:
            trained.setdefault(context, set()).update(names)
    out = []
    for key in keys:
        names = _names(key[1]) - {control_label}
        known = trained.get(key[0], set())
        knows = names <= known if rule == "every" else bool(names & known)
        out.append(bool(names) and not knows)
    return out


def is_average_response(source: str) -> bool:
    """A prior source that says nothing of the key itself: the context's average response."""
    return source == "context_mean" or source.endswith(FALLBACK)


@dataclass(frozen=True)
class KeysAtPrior:
    """Per key: predicted at its prior or not, the prior's delta (zeros if not), its source."""

    anchored: list[bool]
    deltas: np.ndarray  # [n_keys, G] float32
    sources: list[str]  # the prior's source, NETWORK where the network predicts the key


def keys_at_prior(
    prior: FittedPrior,
    scope: str,
    effects: TrainingEffects,
    keys: Sequence[Key],
    data: SplitCells,
) -> KeysAtPrior:
    """Which keys a run of scope ``out_of_context`` or ``informed`` predicts at its prior.

    Only the priors of keys that may use them are computed (the keys out of context, and
    for ``informed`` the combinations not trained in their context: one that was is the
    network's, which has seen its own cells).

    Args:
        prior: The run's prior, fitted on all its training keys.
        scope: ``out_of_context`` or ``informed``.
        effects: The run's training effects (what the network knows).
        keys: The keys to predict.
        data: Their cells (a target signature reads the controls).

    Raises:
        ValueError: Scope ``all`` (every key adds the prior; nothing is anchored) or unknown.
    """
    check_scope(scope)
    if scope == "all":
        raise ValueError("scope 'all' adds the prior to every key; no key is predicted at it")
    control = prior.control_label
    outside = out_of_context_keys(effects, keys, control)
    trained = set(effects.keys)  # a combination trained in its context is the network's
    combined = [len(_names(k[1]) - {control}) > 1 and tuple(k) not in trained for k in keys]
    rows = [r for r in range(len(keys)) if outside[r] or (scope == "informed" and combined[r])]
    anchored = [False] * len(keys)
    deltas = np.zeros((len(keys), effects.deltas.shape[1]), dtype=np.float32)
    sources = [NETWORK] * len(keys)
    if rows:
        picked, picked_sources = prior.deltas([keys[r] for r in rows], data)
        for row, delta, source in zip(rows, picked, picked_sources, strict=True):
            if scope == "out_of_context":
                at_prior = outside[row]
            else:
                at_prior = source == ADDITIVE_SOURCE or (
                    outside[row] and not is_average_response(source)
                )
            if at_prior:
                anchored[row], deltas[row], sources[row] = True, delta, source
    return KeysAtPrior(anchored, deltas, sources)
