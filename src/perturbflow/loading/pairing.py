"""Control pairing: which control cell (or mean control profile) is the input of each cell.

A model such as STATE's ST maps a sentence of control cells to a sentence of perturbed
cells of the same context. The design is read from ``obs`` once into integer codes
(:class:`~perturbflow.loading.pairing_design.PairingDesign`); a strategy
(:class:`PairingStrategy`, built by name from :data:`PAIRING_STRATEGIES`) then pairs any
rows in O(N log M) with numpy and no Python loop
over cells (:mod:`perturbflow.loading.pairing_strategies`):

- ``random``: a control of the same context (``dataset.celltype``), as cell-load does.
- ``celltype``: a control of the same cell type, in any dataset.
- ``batch``: same batch and context, else the context (counted as a fallback).
- ``batch_celltype``: same batch and cell type across datasets, else the cell type.
- ``control_mean``: the mean control profile of the cell's group (``per``: ``global``,
  ``context`` or ``batch`` = batch within context, else the context); returns group ids.

A cell whose context (cell type, for the cross-dataset strategies) has no control fails
with :class:`~perturbflow.exceptions.InputError`: nothing is paired across contexts silently.

Pairing whole sentences and computing the mean control profiles is
:mod:`perturbflow.loading.control_inputs`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from perturbflow.exceptions import InputError, suggest
from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.pairing_strategies import (
    BatchCelltypePairing,
    BatchPairing,
    CelltypePairing,
    ControlMeanPairing,
    LevelStrategy,
    Pairing,
    RandomPairing,
)


@runtime_checkable
class PairingStrategy(Protocol):
    """A control pairing rule; ``params`` are its options (part of the cache key)."""

    name: str
    params: dict[str, Any]

    def pair(
        self, design: PairingDesign, pert_rows: np.ndarray, rng: np.random.Generator
    ) -> Pairing:
        """Pair every row of ``pert_rows`` with a control."""
        ...


PAIRING_STRATEGIES: dict[str, type[LevelStrategy]] = {
    cls.name: cls
    for cls in (
        RandomPairing,
        CelltypePairing,
        BatchPairing,
        BatchCelltypePairing,
        ControlMeanPairing,
    )
}


def get_pairing_strategy(name: str, **kwargs: Any) -> PairingStrategy:
    """Build a strategy of ``PAIRING_STRATEGIES`` (register your own class there).

    Raises:
        InputError: Unknown name (lists the names, suggests a close one) or bad options.
    """
    if name not in PAIRING_STRATEGIES:
        raise InputError(
            f"Unknown pairing strategy {name!r} (loader.pairing); choose one of "
            f"{sorted(PAIRING_STRATEGIES)}.{suggest(name, PAIRING_STRATEGIES)}"
        )
    return PAIRING_STRATEGIES[name](**kwargs)
