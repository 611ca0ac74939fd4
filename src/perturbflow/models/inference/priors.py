"""How a trained run's response prior enters its predictions.

``prior_scope: all`` adds the prior delta to the network's predicted delta of every key;
``informed`` and ``out_of_context`` predict some keys at their prior and leave the others
to the network (:mod:`perturbflow.models.components.prior_scope` says which).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perturbflow.models.components.prior import ResponsePrior, load_response_prior
from perturbflow.models.components.prior_scope import NETWORK, keys_at_prior
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.splits.data import SplitCells

Key = tuple[str, str]


@dataclass(frozen=True)
class PriorPlan:
    """Per key: the prior delta the network adds, or the prior it is predicted at."""

    adds: bool  # scope all: every key's prior delta is added to the network's
    anchored: list[bool]  # scopes informed, out_of_context: predicted at the prior
    deltas: np.ndarray | None
    sources: list[str]

    def added(self, row: int) -> np.ndarray | None:
        """The prior delta the network adds to key ``row``'s (scope ``all``), else ``None``."""
        return self.deltas[row] if self.adds else None


def prior_plan(
    run: TrainedRun, keys: list[Key], data: SplitCells, *, network_only: bool = False
) -> tuple[ResponsePrior | None, PriorPlan]:
    """The run's prior and, per key, how the prediction uses it.

    Args:
        run: The trained run.
        keys: The keys to predict.
        data: Their cells (a target signature reads the controls).
        network_only: With a scope other than ``all``, predict every key by the network
            (no key at its prior): what a sweep over the network's settings must compare.

    Returns:
        The prior (``None`` for a run without one) and the per-key plan.
    """
    prior = run_prior(run)
    n = len(keys)
    if prior is None:
        return None, PriorPlan(False, [False] * n, None, [])
    scope = run_prior_scope(run)
    if scope == "all":
        deltas, sources = prior.deltas(keys, data)
        return prior, PriorPlan(True, [False] * n, deltas, sources)
    if network_only:
        zeros = np.zeros((n, run.inputs.effects.deltas.shape[1]), dtype=np.float32)
        return prior, PriorPlan(False, [False] * n, zeros, [NETWORK] * n)
    at_prior = keys_at_prior(prior, scope, run.inputs.effects, keys, data)
    return prior, PriorPlan(False, at_prior.anchored, at_prior.deltas, at_prior.sources)


def run_prior(run: TrainedRun) -> ResponsePrior | None:
    """The response prior a run predicts with, fitted on all its training keys.

    Read from the run folder (a finetuned run has its own, refitted on its split); runs
    from before the option have none.
    """
    kind = run.config["training"]["model"].get("response_prior", "none")
    return load_response_prior(run.path, kind, run.inputs.effects, run.inputs.control_label)


def run_prior_scope(run: TrainedRun) -> str:
    """Where a run's prior applies (``all`` for runs from before the option)."""
    return str(run.config["training"]["model"].get("prior_scope", "all"))
