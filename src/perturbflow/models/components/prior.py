"""The response prior: what the ST model predicts before it has learned anything specific.

With ``training.model.response_prior: context_mean`` every perturbed sentence's predicted
delta starts from its context's mean training response (the ``perturbation_mean`` effect of
:func:`perturbflow.evaluation.baselines.predict_perturbation_mean`: the mean over the
context's training perturbations, or over every training context for a context without
any). The network, whose output head starts at zero, then learns each perturbation's
*departure* from that mean. Two things follow:

* a perturbation the model knows nothing about (identity hidden or never trained, the
  "is perturbed" column alone) is predicted near ``perturbation_mean``, which is what a
  model should fall back to, instead of an average learned only from the identity-dropout
  share of the training sentences;
* a combination ``A+B`` of components trained in the context is predicted as the mean plus
  the two departures, i.e. the additive model ``delta_A + delta_B - mean`` that the linear
  baseline's ``components`` source uses.

The prior is computed from the run's saved training effects (``training_effects.npz``), so
training and inference use the same numbers, and no held-out cell is read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from perturbflow.perturbations import components
from perturbflow.splits.effects import TrainingEffects

Key = tuple[str, str]

PRIORS = ("none", "context_mean")


def prior_deltas(
    effects: TrainingEffects, keys: Sequence[Key], *, control_label: str, kind: str
) -> np.ndarray | None:
    """Prior delta per key, ``[n_keys, G]`` float32, or ``None`` for ``kind='none'``.

    Args:
        effects: Training effects of the run (deltas in the model's expression space).
        keys: ``(context, perturbation)`` pairs; the control's prior is zero.
        control_label: The control's label.
        kind: ``none`` or ``context_mean``.

    Raises:
        ValueError: An unknown ``kind``.
    """
    if kind == "none":
        return None
    if kind != "context_mean":
        raise ValueError(f"unknown response prior {kind!r}; expected one of {PRIORS}")
    means: dict[str, np.ndarray] = {}
    out = np.zeros((len(keys), effects.deltas.shape[1]), dtype=np.float32)
    for row, (context, perturbation) in enumerate(keys):
        if not [c for c in components(perturbation) if c != control_label]:
            continue  # the control: no effect
        if context not in means:
            means[context] = effects.mean_delta(context).astype(np.float32)
        out[row] = means[context]
    return out
