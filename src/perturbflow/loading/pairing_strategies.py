"""The control pairing strategies: vectorised rules that give each cell a control.

Every strategy is a :class:`LevelStrategy`: the controls of a level (``global``,
``context``, ``celltype``, ``batch_context``, ``batch_celltype``) are sorted by group key
once, each group's start and size found once, and every cell draws
``start + floor(u * size)`` from one uniform ``u``: O(N log M) with numpy and no Python loop
over cells. A cell whose group has no control falls back to the next level, if the strategy
has one; with none left it fails. A strategy returns a :class:`Pairing`. The strategies are
registered by name, and the :class:`~perturbflow.loading.pairing.PairingDesign` they read is
built, in :mod:`perturbflow.loading.pairing`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from perturbflow.exceptions import InputError, suggest
from perturbflow.loading.pairing_design import PairingDesign

logger = logging.getLogger(__name__)

_SCOPE = {"context": "contexts", "celltype": "cell types", "global": "the data"}


@dataclass(frozen=True, eq=False)
class Pairing:
    """The controls paired with a list of rows (same order).

    Attributes:
        control_rows: Control row per cell; ``-1`` for ``control_mean``.
        fallback: The cell's control came from a wider pool than the strategy asked for.
        mean_group: ``control_mean`` only: index into ``mean_groups`` per cell, else ``None``.
        mean_groups: Labels of the groups whose mean profile is the input.
        stats: ``n_pairs``, ``n_by_level``, ``n_fallbacks`` (per fallback level) and, at
            the asked level, ``controls_per_group`` and ``groups_without_control``.
    """

    control_rows: np.ndarray
    fallback: np.ndarray
    mean_group: np.ndarray | None
    mean_groups: list[tuple[str, ...]]
    stats: dict[str, Any]


@dataclass(frozen=True, eq=False)
class _ControlIndex:
    """The controls of one level sorted by group key, with each group's start and size."""

    level: str  # global | context | celltype | batch_context | batch_celltype
    key: np.ndarray  # group key of every cell
    uniq: np.ndarray  # sorted keys that have controls
    starts: np.ndarray
    counts: np.ndarray
    rows: np.ndarray  # control rows sorted by key

    @classmethod
    def build(cls, design: PairingDesign, level: str) -> _ControlIndex:
        by_context = "context" in level
        key = np.zeros(design.n_cells, np.int64)
        if level != "global":
            key = (design.context if by_context else design.celltype).astype(np.int64)
        if level.startswith("batch"):  # context-major: groups sort by context, then batch
            n_batch = len(design.batch_labels)  # type: ignore[arg-type]
            key = key * n_batch + design.batch  # type: ignore[operator]
        ctrl = np.flatnonzero(design.is_control)
        rows = ctrl[np.argsort(key[ctrl], kind="stable")]
        starts = np.flatnonzero(np.diff(key[rows], prepend=-1) != 0)
        counts = np.diff(np.r_[starts, len(rows)])
        return cls(level, key, key[rows][starts], starts, counts, rows)

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """Position in ``uniq`` of each row's group, ``-1`` where the group has no control."""
        if not len(self.uniq):
            return np.full(len(rows), -1, np.int64)
        query = self.key[rows]
        pos = np.minimum(np.searchsorted(self.uniq, query), len(self.uniq) - 1)
        return np.where(self.uniq[pos] == query, pos, -1)

    def labels(self, design: PairingDesign, keys: np.ndarray) -> list[tuple[str, ...]]:
        """Label of each group key: ``(context,)``, ``(celltype,)``, ``(…, batch)``."""
        if self.level == "global":
            return [("all",)] * len(keys)
        base = design.context_labels if "context" in self.level else design.celltype_labels
        if not self.level.startswith("batch"):
            return [(base[k],) for k in keys]
        n_batch = len(design.batch_labels)  # type: ignore[arg-type]
        return [(base[k // n_batch], design.batch_labels[k % n_batch]) for k in keys]  # type: ignore[index]


class LevelStrategy:
    """Pairs within the first level whose group has a control (later levels: fallbacks)."""

    name: ClassVar[str]
    levels: tuple[str, ...]

    def __init__(self, **kwargs: Any) -> None:
        if kwargs:
            raise InputError(
                f"Pairing strategy {self.name!r} takes no options (loader.pairing_kwargs); "
                f"got {sorted(kwargs)}."
            )
        self.params: dict[str, Any] = {}

    @property
    def needs_batch(self) -> bool:
        """Whether the strategy needs a batch column."""
        return self.levels[0].startswith("batch")

    def _resolve(
        self, design: PairingDesign, pert_rows: np.ndarray
    ) -> tuple[list[_ControlIndex], np.ndarray, np.ndarray, dict[str, Any]]:
        """Level and group position of every row; fails on rows with no control at all."""
        if self.needs_batch:
            design.require_batch(self.name)
        n = design.n_cells
        if pert_rows.ndim != 1 or (
            len(pert_rows) and (pert_rows.min() < 0 or pert_rows.max() >= n)
        ):
            raise InputError(f"pert_rows must be a 1-D array of rows in [0, {n}).")
        indexes = [_ControlIndex.build(design, level) for level in self.levels]
        level_of = np.full(len(pert_rows), -1, np.int8)
        group = np.full(len(pert_rows), -1, np.int64)
        todo = np.arange(len(pert_rows))
        for i, index in enumerate(indexes):  # at most two levels
            pos = index.lookup(pert_rows[todo])
            found = pos >= 0
            level_of[todo[found]], group[todo[found]] = i, pos[found]
            todo = todo[~found]
        first, last = indexes[0], indexes[-1]
        if len(todo):
            bad = ["|".join(b) for b in last.labels(design, np.unique(last.key[pert_rows[todo]]))]
            raise InputError(
                f"Pairing strategy {self.name!r}: {len(todo):,} cells to pair are in "
                f"{_SCOPE[last.level]} with no control cell ({design.control_desc}): "
                f"{bad[:20]}. Cells are never paired across {_SCOPE[last.level]}; drop "
                "these cells or add controls."
            )
        by_level = np.bincount(level_of, minlength=len(indexes)).tolist()
        missing = np.setdiff1d(np.unique(first.key[pert_rows]), first.uniq)
        stats = {
            "strategy": self.name,
            "params": dict(self.params),
            "n_pairs": len(pert_rows),
            "n_by_level": {ix.level: by_level[i] for i, ix in enumerate(indexes)},
            "n_fallbacks": {ix.level: by_level[i] for i, ix in enumerate(indexes) if i},
            "controls_per_group": {
                "|".join(label): int(count)
                for label, count in zip(first.labels(design, first.uniq), first.counts, strict=True)
            },
            "groups_without_control": ["|".join(b) for b in first.labels(design, missing)],
        }
        # debug: the loader pairs every epoch; the pairing pipeline logs and saves its stats
        logger.debug(
            "Paired %d cells (%s %s): by level %s; groups without control: %d",
            *(stats[k] for k in ("n_pairs", "strategy", "params", "n_by_level")),
            len(missing),
        )
        return indexes, level_of, group, stats

    def pair(
        self, design: PairingDesign, pert_rows: np.ndarray, rng: np.random.Generator
    ) -> Pairing:
        """Draw one control row per row of ``pert_rows`` (reproducible from ``rng``)."""
        pert_rows = np.asarray(pert_rows, dtype=np.int64)
        indexes, level_of, group, stats = self._resolve(design, pert_rows)
        u = rng.random(len(pert_rows))  # one draw per cell, whatever level it resolves at
        rows = np.empty(len(pert_rows), np.int64)
        for i, index in enumerate(indexes):
            sel = level_of == i
            count = index.counts[group[sel]]
            offset = np.minimum((u[sel] * count).astype(np.int64), count - 1)
            rows[sel] = index.rows[index.starts[group[sel]] + offset]
        return Pairing(rows, level_of > 0, None, [], stats)


class RandomPairing(LevelStrategy):
    """A random control of the same context (``dataset.celltype``)."""

    name, levels = "random", ("context",)


class CelltypePairing(LevelStrategy):
    """A random control of the same cell type, from any dataset."""

    name, levels = "celltype", ("celltype",)


class BatchPairing(LevelStrategy):
    """Same batch and context; falls back to the context."""

    name, levels = "batch", ("batch_context", "context")


class BatchCelltypePairing(LevelStrategy):
    """Same batch and cell type across datasets; falls back to the cell type."""

    name, levels = "batch_celltype", ("batch_celltype", "celltype")


class ControlMeanPairing(LevelStrategy):
    """The input is the mean control profile of the cell's group.

    The profiles are computed by :func:`~perturbflow.loading.control_inputs.control_means`.

    Args:
        per: ``global``, ``context`` or ``batch`` (within the context, falling back to
            the context's mean when the batch has no control there).
    """

    name = "control_mean"
    PER: ClassVar[dict[str, tuple[str, ...]]] = {
        "global": ("global",),
        "context": ("context",),
        "batch": ("batch_context", "context"),
    }

    def __init__(self, per: str = "context", **kwargs: Any) -> None:
        if kwargs or per not in self.PER:
            got = f"{sorted(kwargs)}" if kwargs else f"per={per!r}"
            hint = suggest(next(iter(kwargs), per), [*self.PER, "per"])
            raise InputError(
                f"Pairing strategy 'control_mean' takes per (loader.pairing_kwargs) in "
                f"{list(self.PER)}; got {got}.{hint}"
            )
        self.per, self.levels, self.params = per, self.PER[per], {"per": per}

    def groups(self, design: PairingDesign) -> tuple[list[_ControlIndex], np.ndarray]:
        """The control index of each level and the group-id offset of each level."""
        indexes = [_ControlIndex.build(design, level) for level in self.levels]
        return indexes, _group_offsets(indexes)

    def pair(
        self, design: PairingDesign, pert_rows: np.ndarray, rng: np.random.Generator
    ) -> Pairing:
        """Give every row its mean group (deterministic: ``rng`` is not used)."""
        pert_rows = np.asarray(pert_rows, dtype=np.int64)
        indexes, level_of, group, stats = self._resolve(design, pert_rows)
        offsets = _group_offsets(indexes)
        labels = [label for ix in indexes for label in ix.labels(design, ix.uniq)]
        rows = np.full(len(pert_rows), -1, np.int64)
        return Pairing(rows, level_of > 0, offsets[level_of] + group, labels, stats)


def _group_offsets(indexes: Sequence[_ControlIndex]) -> np.ndarray:
    """First group id of each level (one more entry: the total), levels' groups in turn."""
    return np.cumsum([0] + [len(ix.uniq) for ix in indexes])
