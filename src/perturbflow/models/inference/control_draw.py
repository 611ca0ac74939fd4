"""The control cells a prediction starts from: drawn per perturbation, and their means.

A prediction draws, per ``(context, perturbation)``, as many control rows of the context as
cells are asked for (with replacement only when there are too few), or starts every cell
from its batch's control mean. The means are streamed in blocks of rows and computed once
per prediction (:class:`ControlMeans`); the population mean is also what the predicted
cells are centred on (``predict_cells(centre_draw=True)``).
"""

from __future__ import annotations

import numpy as np

from perturbflow.splits.data import SplitCells
from perturbflow.splits.effects import group_means


class ControlMeans:
    """A prediction's control means, per context (and batch), each computed once.

    Streamed in blocks of rows (:func:`~perturbflow.splits.effects.group_means`): a
    context's controls are never held whole, and never read once per perturbation.
    """

    def __init__(self, data: SplitCells, inputs: np.ndarray | None) -> None:
        self.data, self.inputs = data, inputs
        self.matrix = data.X if inputs is None else inputs  # what the model reads
        self._population: dict[str, np.ndarray] = {}
        self._per_batch: dict[str, dict[int, np.ndarray]] = {}

    def population(self, context: str) -> np.ndarray:
        """Mean of the context's control inputs (the data's, or e.g. MMD-shifted ones)."""
        if context not in self._population:
            if self.inputs is None:
                self._population[context] = self.data.control_mean(context)
            else:
                rows = self.data.control_rows(context)
                _, mean, _ = group_means(self.inputs, np.zeros(len(rows), dtype=np.int64), rows)
                self._population[context] = mean[0]
        return self._population[context]

    def per_batch(self, context: str, batch: np.ndarray) -> dict[int, np.ndarray]:
        """Mean control input of each batch code of the context's controls."""
        if context not in self._per_batch:
            rows = self.data.control_rows(context)
            codes, means, _ = group_means(self.matrix, batch[rows], rows)
            self._per_batch[context] = dict(zip(codes.tolist(), means, strict=True))
        return self._per_batch[context]


def draw_control_inputs(
    data: SplitCells,
    context: str,
    n: int,
    rng: np.random.Generator,
    means: ControlMeans,
    *,
    control_mean: bool,
    batch: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``n`` control inputs of ``context`` (cells, or their batch's mean), batch codes, rows.

    ``means.matrix`` (``data.X``, or inputs with its rows) is what the model reads. The
    rows are the control cells drawn (with ``control_mean``, the cells whose batch's mean
    is the input).
    """
    M = means.matrix
    ctrl = data.control_rows(context)  # not empty: predict_cells checked every context
    picked = rng.choice(ctrl, size=n, replace=n > len(ctrl))
    X = M[picked]
    codes = None if batch is None else batch[picked]
    if control_mean:
        if codes is None:
            X = np.broadcast_to(means.population(context), X.shape).astype(X.dtype)
        else:
            X = X.copy()
            for code, mean in means.per_batch(context, batch).items():
                X[codes == code] = mean
    return X, codes, picked
