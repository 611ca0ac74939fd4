"""Dose-interpolation augmentation: training sentences at doses between observed ones.

An option of the training loader (off by default). With probability ``rate`` a training
sentence of a single drug at dose ``d_i`` in a context becomes a sentence at an
*intermediate* dose between ``d_i`` and an adjacent observed dose ``d_j`` of the same drug
in the same context (same unit): a weight ``t ~ U(0, 1)`` is drawn, the sentence's cells
are shifted by ``t * (delta_j - delta_i)`` (the difference of the two doses' mean training
responses) and the perturbation vector is blended, ``(1 - t) v_i + t v_j``. With the
``log`` dose encoding (:mod:`perturbflow.models.components.dose`) that blend *is* the
encoding of the
dose whose log-dose coordinate lies a fraction ``t`` of the way from ``x_i`` to ``x_j``.

Shifting real cells (rather than mixing the cells of both doses) keeps the cell-to-cell
spread of a real sentence and moves only its mean, so a set loss sees a plausible set.
The control inputs are untouched: each cell keeps the control it was paired with (within
its plate under ``batch`` pairing), and the deltas are measured against the controls of
each cell's own batch (else its context), so plate offsets do not leak into the shift.

This is a prior, not data: it assumes the mean response moves linearly in the log-dose
coordinate between two adjacent observed doses (monotone, no peak or dip between them).
A Hill curve is not linear in log dose, so the synthetic targets are biased where the curve
bends; the option helps most when doses are sparse and the response is smooth.
Combinations and dose-0 labels are never interpolated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from perturbflow.exceptions import InputError
from perturbflow.loading.control_inputs import control_means
from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.pairing_strategies import ControlMeanPairing
from perturbflow.perturbations import parse_perturbation


@dataclass(frozen=True)
class DoseNeighbours:
    """Adjacent doses among cell groups.

    Attributes:
        partners: Per group, the groups of the next lower and next higher dose of the same
            drug, context and unit (0 to 2 entries).
    """

    partners: list[np.ndarray]

    @property
    def n_interpolable(self) -> int:
        """Groups with at least one adjacent dose."""
        return sum(len(p) > 0 for p in self.partners)


def dose_neighbours(keys: Sequence[tuple[str, str]], *, control_label: str) -> DoseNeighbours:
    """Find each group's adjacent doses (labels that are not a single dosed drug: none).

    Args:
        keys: ``(context, perturbation)`` of each group.
        control_label: The control's label (never interpolated).
    """
    ladders: dict[tuple[str, str, str | None], list[tuple[float, int]]] = {}
    for g, (context, label) in enumerate(keys):
        if label == control_label:
            continue
        try:
            comps = parse_perturbation(label)
        except InputError:
            continue
        if len(comps) != 1 or comps[0].dose is None or comps[0].dose <= 0:
            continue
        comp = comps[0]
        ladders.setdefault((context, comp.name, comp.unit), []).append((comp.dose, g))
    partners = [np.zeros(0, np.int64) for _ in keys]
    for ladder in ladders.values():
        ladder.sort()
        groups = [g for _, g in ladder]
        for i, g in enumerate(groups):
            near = groups[max(0, i - 1) : i] + groups[i + 1 : i + 2]
            partners[g] = np.asarray(near, np.int64)
    return DoseNeighbours(partners)


class DoseInterpolation:
    """Draws which training sentences become intermediate-dose sentences.

    Args:
        neighbours: Adjacent doses of the loader's groups.
        rate: Probability that an interpolable sentence is interpolated.
    """

    def __init__(self, neighbours: DoseNeighbours, rate: float) -> None:
        if not 0.0 <= rate <= 1.0:
            raise InputError(
                f"training.model.inputs.dose_interpolation must be in [0, 1], got {rate}."
            )
        self.neighbours = neighbours
        self.rate = rate

    def draw(self, group_of: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Partner group (``-1``: not interpolated) and weight ``t`` of every sentence."""
        n = len(group_of)
        mix = np.full(n, -1, np.int64)
        weight = np.zeros(n, np.float32)
        chosen = rng.random(n) < self.rate
        pick = rng.random(n)
        t = rng.random(n).astype(np.float32)
        for i in np.flatnonzero(chosen):
            near = self.neighbours.partners[group_of[i]]
            if len(near):
                mix[i] = near[min(int(pick[i] * len(near)), len(near) - 1)]
                weight[i] = t[i]
        return mix, weight


def group_deltas(
    read: Callable[[np.ndarray], np.ndarray],
    design: PairingDesign,
    rows: Sequence[np.ndarray],
    which: np.ndarray,
) -> np.ndarray:
    """Mean response of some groups: their cells minus the control mean of each cell's group.

    The control mean is per (batch, context) when the design has batches (falling back to
    the context), else per context, so a plate's offset cancels.

    Args:
        read: Reads rows of the expression space.
        design: The cells' codes.
        rows: Rows of every group.
        which: The groups to compute (others stay zero).

    Returns:
        ``[len(rows), n_features]`` float32.
    """
    strategy = ControlMeanPairing(per="batch" if design.batch is not None else "context")
    means = control_means(read, design, strategy)
    out: np.ndarray | None = None
    rng = np.random.default_rng(0)  # control_mean pairing is deterministic: rng unused
    for g in which:
        r = np.asarray(rows[g], np.int64)
        if not len(r):
            continue
        paired = strategy.pair(design, r, rng).mean_group
        delta = np.asarray(read(r), np.float64).mean(axis=0) - means[paired].mean(axis=0)
        if out is None:
            out = np.zeros((len(rows), len(delta)), np.float32)
        out[g] = delta
    return np.zeros((len(rows), means.shape[1]), np.float32) if out is None else out
