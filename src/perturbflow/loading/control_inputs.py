"""The control side of each (control, perturbed) input, from a pairing strategy.

:func:`pair_sentences` gives every perturbed cell sentence a control sentence of the same
size (control rows, or mean-group ids for ``control_mean``); :func:`control_means` computes
the mean control profiles those group ids index, reading rows in chunks. The strategies
themselves live in :mod:`perturbflow.loading.pairing_strategies`, their registry and the
design in :mod:`perturbflow.loading.pairing`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.loading.pairing import PairingStrategy, get_pairing_strategy
from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.pairing_strategies import ControlMeanPairing

logger = logging.getLogger(__name__)


def pair_sentences(
    design: PairingDesign,
    sentences: Sequence[np.ndarray] | np.ndarray,
    strategy: str | PairingStrategy,
    rng: np.random.Generator,
) -> np.ndarray:
    """A control sentence of the same size for every perturbed sentence (one vectorised call).

    Args:
        design: The cells' codes.
        sentences: ``[n_sentences, S]`` rows, or a list of equally long row arrays.
        strategy: A strategy, or a name (default options).
        rng: Random generator.

    Returns:
        ``[n_sentences, S]`` control rows (mean-group ids for ``control_mean``).
    """
    lengths = sorted({len(s) for s in sentences})
    if len(lengths) > 1:
        raise InputError(f"pair_sentences: sentences differ in length {lengths}.")
    rows = np.asarray(sentences, dtype=np.int64)
    rows = rows.reshape(0, 0) if rows.shape == (0,) else rows
    if rows.ndim != 2:
        raise InputError(f"pair_sentences: expected [n_sentences, S] rows, got {rows.shape}.")
    strategy = get_pairing_strategy(strategy) if isinstance(strategy, str) else strategy
    pairing = strategy.pair(design, rows.ravel(), rng)
    out = pairing.control_rows if pairing.mean_group is None else pairing.mean_group
    return out.reshape(rows.shape)


def control_means(
    read: Callable[[np.ndarray], Any],
    design: PairingDesign,
    groups: ControlMeanPairing | str,
    chunk_rows: int = 8192,
) -> np.ndarray:
    """Mean control profile of every ``control_mean`` group, read in chunks of rows.

    Row ``i`` is the mean of ``Pairing.mean_groups[i]``, so ``means[pairing.mean_group]``
    is each cell's input. Only ``chunk_rows`` rows are in memory at a time, so a lazy h5
    reader's ``read`` works without loading the matrix.

    Args:
        read: Returns the rows (dense or scipy sparse) of a sorted row-index array.
        design: The cells' codes.
        groups: The ``control_mean`` strategy, or its ``per`` value.
        chunk_rows: Rows per ``read`` call.

    Returns:
        ``[n_groups, n_features]`` float means (float64 sums).
    """
    strategy = ControlMeanPairing(per=groups) if isinstance(groups, str) else groups
    if strategy.needs_batch:
        design.require_batch(strategy.name)
    indexes, offsets = strategy.groups(design)
    ctrl = np.flatnonzero(design.is_control)
    if not len(ctrl):
        raise InputError(f"control_means: no control cell ({design.control_desc}).")
    member = np.stack(
        [
            o + np.searchsorted(ix.uniq, ix.key[ctrl])
            for o, ix in zip(offsets, indexes, strict=False)  # offsets has one more entry
        ]
    )
    sums, dtype = 0.0, np.float32
    for start in range(0, len(ctrl), chunk_rows):
        block = read(ctrl[start : start + chunk_rows])
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        dtype = np.result_type(block.dtype, np.float32)
        gids = member[:, start : start + len(block)]
        cols = np.broadcast_to(np.arange(len(block)), gids.shape)
        # a sparse 0/1 indicator sums every group of the chunk in one product
        indicator = sp.csr_matrix(
            (np.ones(gids.size), (gids.ravel(), cols.ravel())), (offsets[-1], len(block))
        )
        sums = sums + indicator @ block.astype(np.float64)
    counts = np.concatenate([ix.counts for ix in indexes])
    logger.info("Mean control profiles: %d groups (per=%s)", len(counts), strategy.per)
    return (sums / counts[:, None]).astype(dtype)
