"""Control pairing: which control cell (or mean control profile) is the input of each cell.

A model such as STATE's ST maps a sentence of control cells to a sentence of perturbed
cells of the same context. The design is read from ``obs`` once into integer codes
(:class:`PairingDesign`); a strategy then pairs any rows in O(N log M) with numpy and no
Python loop over cells: controls are sorted by group key, each group's start and size
found once, and every cell draws ``start + floor(u * size)`` from one uniform ``u``.

- ``random``: a control of the same context (``dataset.celltype``), as cell-load does.
- ``celltype``: a control of the same cell type, in any dataset.
- ``batch``: same batch and context, else the context (counted as a fallback).
- ``batch_celltype``: same batch and cell type across datasets, else the cell type.
- ``control_mean``: the mean control profile of the cell's group (``per``: ``global``,
  ``context`` or ``batch`` = batch within context, else the context); returns group ids.

A cell whose context (cell type, for the cross-dataset strategies) has no control fails
with :class:`~perturbflow.exceptions.InputError`: nothing is paired across contexts silently.

Pairing whole sentences and computing the mean control profiles is
:mod:`perturbflow.loading.control_inputs` (its functions still import from here).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from perturbflow.exceptions import InputError, suggest
from perturbflow.params import ColumnsParams

logger = logging.getLogger(__name__)

BATCH_STRATEGIES = ["batch", "batch_celltype", "control_mean (per='batch')"]
_SCOPE = {"context": "contexts", "celltype": "cell types", "global": "the data"}


@dataclass(frozen=True, eq=False)
class PairingDesign:
    """Integer codes of every cell (AnnData row order), built once from ``obs``.

    Attributes:
        is_control: Whether each cell is a control.
        context: Code per cell into ``context_labels`` (sorted ``dataset.celltype``).
        context_labels: Context labels.
        celltype: Code per cell into ``celltype_labels`` (sorted cell types).
        celltype_labels: Cell type labels.
        batch: Code per cell into ``batch_labels``, or ``None`` without a batch column.
        batch_labels: Sorted batch labels, or ``None``.
        batch_col: The obs batch column (for messages), or ``None``.
        control_desc: How controls were recognised (for messages).
    """

    is_control: np.ndarray
    context: np.ndarray
    context_labels: list[str]
    celltype: np.ndarray
    celltype_labels: list[str]
    batch: np.ndarray | None = None
    batch_labels: list[str] | None = None
    batch_col: str | None = None
    control_desc: str = "control cells"

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.is_control)

    @classmethod
    def from_obs(
        cls,
        obs: pd.DataFrame,
        columns: ColumnsParams,
        strategy: str | PairingStrategy | None = None,
    ) -> PairingDesign:
        """Read the codes from ``obs``; a ``strategy`` (or name), if given, is checked too.

        Raises:
            InputError: A configured column is missing (lists the available ones) or has
                missing values, the control label never occurs, or ``strategy`` pairs
                within batches and ``columns.batch_col`` is null.
        """
        available = [str(c) for c in obs.columns]
        for param in ("pert_col", "celltype_col", "dataset_col", "batch_col"):
            column = getattr(columns, param)
            if column is not None and column not in obs.columns:
                raise InputError(
                    f"Control pairing: obs column {column!r} (columns.{param}) is missing. "
                    f"Available columns: {available}.{suggest(column, available)}"
                )
        pert = obs[columns.pert_col]
        is_control = (pert == columns.control_label).to_numpy(dtype=bool)
        if not is_control.any():
            raise InputError(
                f"Control pairing: control label {columns.control_label!r} (columns."
                f"control_label) never occurs in obs column {columns.pert_col!r}."
                f"{suggest(columns.control_label, pert.dropna().astype(str).unique())}"
            )
        celltype, ct_labels = _codes(obs, columns.celltype_col)
        dataset, ds_labels = np.zeros(len(obs), np.int64), [columns.dataset_name]
        if columns.dataset_col is not None:
            dataset, ds_labels = _codes(obs, columns.dataset_col)
        n_ct = len(ct_labels)
        uniq, context = np.unique(dataset * n_ct + celltype, return_inverse=True)
        batch, batch_labels = _codes(obs, columns.batch_col) if columns.batch_col else (None, None)
        design = cls(
            is_control=is_control,
            context=context.astype(np.int32),
            context_labels=[f"{ds_labels[k // n_ct]}.{ct_labels[k % n_ct]}" for k in uniq],
            celltype=celltype.astype(np.int32),
            celltype_labels=ct_labels,
            batch=None if batch is None else batch.astype(np.int32),
            batch_labels=batch_labels,
            batch_col=columns.batch_col,
            control_desc=f"{columns.control_label!r} in obs column {columns.pert_col!r}",
        )
        if isinstance(strategy, str):
            strategy = get_pairing_strategy(strategy)
        if getattr(strategy, "needs_batch", False):
            design.require_batch(strategy.name)  # type: ignore[union-attr]
        return design

    def require_batch(self, strategy: str) -> None:
        """Fail when a strategy that pairs within batches meets a design without batches."""
        if self.batch is None:
            raise InputError(
                f"Pairing strategy {strategy!r} pairs within batches but columns.batch_col is "
                f"null; set it to the obs batch column. Strategies that need it: "
                f"{BATCH_STRATEGIES}."
            )


def _codes(obs: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str]]:
    """Codes of an obs column into its sorted string labels (missing values fail)."""
    codes, uniques = pd.factorize(obs[column])
    if (codes < 0).any():
        raise InputError(
            f"Control pairing: obs column {column!r} has {int((codes < 0).sum()):,} missing "
            "values; every cell needs one."
        )
    labels, inverse = np.unique(np.array([str(u) for u in uniques]), return_inverse=True)
    return inverse[codes].astype(np.int64), labels.tolist()


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


class _LevelStrategy:
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


class RandomPairing(_LevelStrategy):
    """A random control of the same context (``dataset.celltype``)."""

    name, levels = "random", ("context",)


class CelltypePairing(_LevelStrategy):
    """A random control of the same cell type, from any dataset."""

    name, levels = "celltype", ("celltype",)


class BatchPairing(_LevelStrategy):
    """Same batch and context; falls back to the context."""

    name, levels = "batch", ("batch_context", "context")


class BatchCelltypePairing(_LevelStrategy):
    """Same batch and cell type across datasets; falls back to the cell type."""

    name, levels = "batch_celltype", ("batch_celltype", "celltype")


class ControlMeanPairing(_LevelStrategy):
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


PAIRING_STRATEGIES: dict[str, type[_LevelStrategy]] = {
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
