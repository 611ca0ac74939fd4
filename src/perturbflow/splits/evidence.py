"""What is known about a perturbation from the training data: its evidence vectors.

For a ``(context, perturbation)`` key, :class:`Evidence` gives one gene-space vector per
source (:data:`SOURCES`): the sum of its components' training deltas (a combination whose
parts were trained), its mean centred delta in the other contexts where it was trained, and
its target genes' co-expression signature in the context's control cells (how every gene
moves with the target gene). The linear baseline maps them to a response; the ST model
reads them as perturbation inputs for keys it never trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from perturbflow.loading.row_matrix import row_blocks
from perturbflow.perturbations import components
from perturbflow.splits.data import SplitCells
from perturbflow.splits.effects import TrainingEffects

Key = tuple[str, str]

SOURCES = ("components", "other_contexts", "target_signature")
# Sources whose evidence is already a predicted response (the others are signatures).
RESPONSE_SOURCES = frozenset({"components", "other_contexts"})


def _centre(effects: TrainingEffects) -> np.ndarray:
    """Training deltas minus their context's mean delta (the perturbation_mean effect)."""
    out = effects.deltas.copy()
    for context in effects.contexts():
        rows = [i for i, (c, _) in enumerate(effects.keys) if c == context]
        out[rows] -= effects.deltas[rows].mean(axis=0)
    return out


@dataclass
class Evidence:
    """Gene-space evidence vectors per source, computed once per split."""

    data: SplitCells
    effects: TrainingEffects
    centred: np.ndarray = field(init=False)
    index: dict[Key, int] = field(init=False)
    gene_index: dict[str, int] = field(init=False)
    _signatures: dict[tuple[str, str], np.ndarray | None] = field(default_factory=dict)
    _targets: list[str] | None = None

    def __post_init__(self) -> None:
        self.centred = _centre(self.effects)
        self.index = self.effects.index()
        self.gene_index = {g: i for i, g in enumerate(self.data.genes)}

    def with_effects(self, effects: TrainingEffects) -> Evidence:
        """The same cells' evidence under other training effects (e.g. a fold left out).

        Target signatures depend on the control cells alone: the cache is shared, so the
        controls are not read again.
        """
        other = Evidence(self.data, effects)
        other._signatures = self._signatures
        other._targets = self._targets
        return other

    def vector(self, source: str, key: Key) -> np.ndarray | None:
        """The evidence vector of ``key`` from ``source``, or ``None`` if unavailable."""
        context, perturbation = key
        if source == "components":
            parts = components(perturbation)
            if len(parts) < 2 or not all((context, p) in self.index for p in parts):
                return None
            # additive model: the sum of the raw component deltas, centred once
            total = sum(self.effects.deltas[self.index[(context, p)]] for p in parts)
            return total - self.effects.mean_delta(context)
        if source == "other_contexts":
            rows = [
                self.index[(c, perturbation)]
                for c in self.effects.contexts()
                if c != context and (c, perturbation) in self.index
            ]
            return self.centred[rows].mean(axis=0) if rows else None
        if source == "target_signature":
            parts = components(perturbation)
            if not all(p in self.gene_index for p in parts):
                return None
            sigs = [self._signature(context, p) for p in parts]
            return None if any(s is None for s in sigs) else sum(sigs)
        raise ValueError(f"unknown evidence source {source!r}")

    def _signature(self, context: str, gene: str) -> np.ndarray | None:
        if (context, gene) not in self._signatures:
            # every target gene's slope in one pass over the context's controls (one pass
            # per gene would read a large context's controls once per perturbation)
            genes = self._target_genes()
            if gene not in genes:
                genes = [*genes, gene]
            rows = self.data.control_rows(context)
            slopes: list[np.ndarray | None] = [None] * len(genes)
            if len(rows) >= 3:
                columns = np.array([self.gene_index[g] for g in genes])
                slopes = _streamed_slopes(self.data.X, rows, columns)
            self._signatures.update(dict(zip([(context, g) for g in genes], slopes, strict=True)))
        return self._signatures[(context, gene)]

    def _target_genes(self) -> list[str]:
        """Measured genes that some perturbation of the split targets (cached)."""
        if self._targets is None:
            labels = self.data.cells["perturbation"].unique()
            parts = {g for label in labels for g in components(str(label))}
            self._targets = sorted(parts & set(self.gene_index))
        return self._targets


def _streamed_slopes(X: Any, rows: np.ndarray, columns: np.ndarray) -> list[np.ndarray | None]:
    """Regression slope of every gene on each gene of ``columns`` over ``rows``, in blocks.

    The slopes of the one-piece formula, from running sums gathered in one pass over the
    rows (the control cells of one context of a large screen do not fit in RAM as float64,
    and one pass per target gene would read them once per perturbation). ``None`` for a
    target gene that does not vary.
    """
    n = len(rows)
    sum_x = np.zeros(X.shape[1])
    sum_xt = np.zeros((X.shape[1], len(columns)))
    sum_t = np.zeros(len(columns))
    sum_tt = np.zeros(len(columns))
    for _, block in row_blocks(X, rows):
        values = block.astype(np.float64)
        t = values[:, columns]
        sum_x += values.sum(axis=0)
        sum_xt += values.T @ t
        sum_t += t.sum(axis=0)
        sum_tt += (t * t).sum(axis=0)
    mean_t = sum_t / n
    var = sum_tt / n - mean_t**2
    slopes = (sum_xt / n - np.outer(sum_x / n, mean_t)) / np.where(var > 0, var, 1.0)
    constant = var <= 1e-12 * np.maximum(sum_tt / n, 1e-12)  # a constant gene, up to rounding
    return [None if constant[k] else slopes[:, k] for k in range(len(columns))]
