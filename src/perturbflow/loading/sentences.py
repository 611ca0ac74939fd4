"""Cell sentences: sets of ``cell_set_len`` cells of one (context, perturbation) group.

A model such as STATE's ST maps a *sentence* of control cells to a sentence of perturbed
cells of the same context. This module groups the cells of one split label into
``(dataset.celltype, perturbation)`` groups and cuts them into sentences:

- **training** (``shuffle=True``): each epoch every group's cells are shuffled and cut
  into ``ceil(n / S)`` sentences; the last one, and every group smaller than a sentence,
  is filled by sampling the group's cells with replacement. Sampling is a pure function
  of ``(seed, epoch)``: rerunning an epoch gives the same sentences, the next epoch
  fresh ones.
- **evaluation** (``shuffle=False``): cells in their stored order; the last sentence is
  filled by cycling through the group from its first cell, so the result is identical
  on every call (no randomness).

Everything is vectorised over groups with numpy (no Python loop over cells).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CellGroups:
    """The cells of one split label grouped by (context, perturbation).

    Attributes:
        keys: ``(context, perturbation)`` per group, sorted.
        rows: Row indices (into the AnnData) of each group's cells, ascending.
    """

    keys: list[tuple[str, str]]
    rows: list[np.ndarray]

    @property
    def sizes(self) -> np.ndarray:
        """Number of cells per group."""
        return np.array([len(r) for r in self.rows], dtype=np.int64)


def group_cells(
    cells: pd.DataFrame,
    *,
    split_col: str,
    label: str,
    include_controls: bool,
) -> CellGroups:
    """Group the cells of one split label by (context, perturbation).

    Args:
        cells: Per-cell table in AnnData row order with ``context`` (``dataset.celltype``),
            ``perturbation``, ``is_control`` and the split column.
        split_col: The named split's column.
        label: ``"train"``, ``"val"`` or ``"test"``.
        include_controls: Also make sentences of control cells (the model then learns
            that a control maps to itself).

    Returns:
        The groups, sorted by key (category order: sorted labels for string columns).
    """
    mask = (cells[split_col] == label).to_numpy()
    if not include_controls:
        mask &= ~cells["is_control"].to_numpy(dtype=bool)
    rows = np.flatnonzero(mask)
    # integer keys from categorical codes: no per-cell Python strings (1M cells stay cheap)
    context = cells["context"].astype("category")
    perturbation = cells["perturbation"].astype("category")
    n_pert = len(perturbation.cat.categories)
    key = context.cat.codes.to_numpy()[rows].astype(np.int64) * n_pert
    key += perturbation.cat.codes.to_numpy()[rows]
    uniques, inverse = np.unique(key, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniques)))[:-1]
    groups = np.split(rows[order], bounds)
    ctx_labels = np.asarray(context.cat.categories, dtype=object)
    pert_labels = np.asarray(perturbation.cat.categories, dtype=object)
    return CellGroups(
        keys=[(str(ctx_labels[u // n_pert]), str(pert_labels[u % n_pert])) for u in uniques],
        rows=groups,
    )


def cut_sentences(
    groups: CellGroups, *, cell_set_len: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut every group into sentences of ``cell_set_len`` rows.

    Args:
        groups: The cell groups.
        cell_set_len: Cells per sentence (``S``).
        rng: A generator for training (shuffle + fill with replacement), or ``None`` for
            deterministic evaluation sentences (stored order, cyclic fill).

    Returns:
        ``sentences`` [n_sentences, S] of AnnData row indices and ``group_of`` [n_sentences]
        giving each sentence's group index.
    """
    if cell_set_len < 1:
        raise ValueError(f"cell_set_len must be >= 1, got {cell_set_len}")
    sizes = groups.sizes
    n_sent = np.maximum(1, -(-sizes // cell_set_len)) * (sizes > 0)
    group_of = np.repeat(np.arange(len(sizes)), n_sent)
    if not len(group_of):
        return np.zeros((0, cell_set_len), dtype=np.int64), group_of
    flat = np.concatenate(groups.rows) if groups.rows else np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # position of each sentence within its group, and of each slot within its group
    first_sentence = np.concatenate([[0], np.cumsum(n_sent)[:-1]])
    sentence_in_group = np.arange(len(group_of)) - first_sentence[group_of]
    slot = sentence_in_group[:, None] * cell_set_len + np.arange(cell_set_len)[None, :]
    size = sizes[group_of][:, None]
    if rng is None:
        local = slot % size  # stored order, cyclic fill: deterministic
    else:
        # a random permutation per group: sort random keys within each group
        perm_keys = rng.random(len(flat)) + np.repeat(np.arange(len(sizes)), sizes)
        permuted = np.argsort(perm_keys, kind="stable") - np.repeat(starts, sizes)
        in_range = slot < size
        filler = np.floor(rng.random(slot.shape) * size).astype(np.int64)
        position = np.where(in_range, slot, filler)
        local = permuted[starts[group_of][:, None] + position]
    sentences = flat[starts[group_of][:, None] + local]
    return sentences.astype(np.int64), group_of.astype(np.int64)
