"""Predict per plate (batch): each prediction starts from the control cells of its own plate.

:func:`~perturbflow.models.inference.predict_cells` draws a key's control inputs from every
control of the context, whatever their plate, so one prediction mixes plates. In a drug
screen the plate shifts every cell of it (controls included), and a compound is scored
against the DMSO wells of *its* plate: :func:`predict_per_plate` predicts
``(context, plate, perturbation)`` keys, each from the controls of that plate and context
only, by handing :func:`predict_cells` the plate's cells. A model with a batch encoder gets
the plate's code too (read from the run's ``batch_map.json``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from perturbflow.evaluation.design import EvaluationData
from perturbflow.exceptions import InputError
from perturbflow.loading._messages import listed
from perturbflow.loading.categories import CategoryMap
from perturbflow.models.inference import predict_cells
from perturbflow.models.run_dir import TrainedRun

PlateKey = tuple[str, str, str]  # context, plate, perturbation


def predict_per_plate(
    run: TrainedRun,
    data: EvaluationData,
    plates: np.ndarray,
    n_cells: Mapping[PlateKey, int],
    *,
    seed: int,
    control_mean: bool = False,
    allow_unknown: bool = False,
) -> dict[PlateKey, np.ndarray]:
    """Predicted cells of every ``(context, plate, perturbation)`` from that plate's controls.

    Args:
        run: A trained run.
        data: Cells in the model's space with their labels.
        plates: The plate (batch) label of every cell of ``data``.
        n_cells: How many cells to predict per key.
        seed: Seed of the control sampling (plate ``i`` in sorted order uses ``seed + i``).
        control_mean: Start from the plate's control mean instead of its control cells.
        allow_unknown: Predict perturbations unknown to the model as the average response.

    Returns:
        The predicted cells per key.

    Raises:
        InputError: ``plates`` of the wrong length, a (context, plate) without control
            cells, or a plate the model's batch encoder never saw; all before predicting.
    """
    plates = np.asarray(plates).astype(str)
    if len(plates) != len(data.X):
        raise InputError(f"plates has {len(plates)} labels for {len(data.X)} cells.")
    cells = data.cells
    is_ctrl = cells["is_control"].to_numpy(dtype=bool)
    context = cells["context"].to_numpy()
    without = sorted(
        f"{c} / {p}" for c, p, _ in n_cells if not np.any(is_ctrl & (context == c) & (plates == p))
    )
    if without:
        raise InputError(
            f"No control cells on plate(s) {listed(sorted(set(without)))}: a plate's "
            "prediction starts from its own controls."
        )
    codes = None
    if run.net.batch_encoder is not None:
        try:
            codes = CategoryMap.from_json(run.path / "batch_map.json").encode(plates)
        except InputError as err:
            raise InputError(f"Plates unknown to the model's batch encoder: {err}") from err
    out: dict[PlateKey, np.ndarray] = {}
    for i, plate in enumerate(sorted({p for _, p, _ in n_cells})):
        rows = np.flatnonzero(plates == plate)
        sub = EvaluationData(
            X=data.X[rows], genes=data.genes, cells=cells.iloc[rows], split_name=data.split_name
        )
        wanted = {(c, p): int(n) for (c, pl, p), n in n_cells.items() if pl == plate}
        predicted = predict_cells(
            run,
            sub,
            wanted,
            seed=seed + i,
            control_mean=control_mean,
            batch=None if codes is None else codes[rows],
            allow_unknown=allow_unknown,
        )
        for (c, p), value in predicted.cells.items():
            out[(c, plate, p)] = value
    return out
