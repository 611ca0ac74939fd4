"""Predict per plate (batch): each prediction starts from the control cells of its own plate.

:func:`~perturbflow.models.inference.predict.predict_cells` draws a key's control inputs from every
control of the context, whatever their plate, so one prediction mixes plates. In a drug
screen the plate shifts every cell of it (controls included), and a compound is scored
against the DMSO wells of *its* plate: :func:`predict_per_plate` predicts
``(context, plate, perturbation)`` keys, each from the controls of that plate and context
only, by handing :func:`predict_cells` the plate's cells. A model with a batch encoder gets
the plate's code too (read from the run's ``batch_map.json``).

:func:`infer_plates` is ``perturbflow infer --per-batch``: it picks the plate keys of a
user's AnnData, predicts them and writes cell-eval's form with the plate of every cell in
the batch column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.exceptions import InputError
from perturbflow.loading._messages import listed
from perturbflow.loading.categories import CategoryMap
from perturbflow.models.inference.predict import (
    CellPredictions,
    Runs,
    as_runs,
    check_known,
    predict_ensemble,
)
from perturbflow.params import ColumnsParams
from perturbflow.predictions import assemble_predictions
from perturbflow.splits.data import SplitCells

PlateKey = tuple[str, str, str]  # context, plate, perturbation


def predict_per_plate(
    run: Runs,
    data: SplitCells,
    plates: np.ndarray,
    n_cells: Mapping[PlateKey, int],
    *,
    seed: int,
    control_mean: bool = False,
    allow_unknown: bool = False,
    control_offset: Literal["keep", "subtract"] = "keep",
) -> dict[PlateKey, np.ndarray]:
    """Predicted cells of every ``(context, plate, perturbation)`` from that plate's controls.

    Args:
        run: A trained run, or a seed ensemble's runs (their cells averaged).
        data: Cells in the model's space with their labels.
        plates: The plate (batch) label of every cell of ``data``.
        n_cells: How many cells to predict per key.
        seed: Seed of the control sampling (plate ``i`` in sorted order uses ``seed + i``).
        control_mean: Start from the plate's control mean instead of its control cells.
        allow_unknown: Predict perturbations unknown to the model as the average response.
        control_offset: As :func:`~perturbflow.models.inference.predict.predict_cells`.

    Returns:
        The predicted cells per key.

    Raises:
        InputError: ``plates`` of the wrong length, a (context, plate) without control
            cells, or a plate the model's batch encoder never saw; all before predicting.
    """
    runs = as_runs(run)
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
    if runs[0].net.batch_encoder is not None:
        try:
            codes = CategoryMap.from_json(runs[0].path / "batch_map.json").encode(plates)
        except InputError as err:
            raise InputError(f"Plates unknown to the model's batch encoder: {err}") from err
    out: dict[PlateKey, np.ndarray] = {}
    for i, plate in enumerate(sorted({p for _, p, _ in n_cells})):
        rows = np.flatnonzero(plates == plate)
        sub = SplitCells(
            X=data.X[rows], genes=data.genes, cells=cells.iloc[rows], split_name=data.split_name
        )
        wanted = {(c, p): int(n) for (c, pl, p), n in n_cells.items() if pl == plate}
        predicted = predict_ensemble(
            runs,
            sub,
            wanted,
            seed=seed + i,
            control_mean=control_mean,
            batch=None if codes is None else codes[rows],
            allow_unknown=allow_unknown,
            control_offset=control_offset,
        )
        for (c, p), value in predicted.cells.items():
            out[(c, plate, p)] = value
    return out


def plate_keys(
    data: SplitCells,
    plates: np.ndarray,
    perturbations: Sequence[str] | None,
    cells_per_perturbation: int | None,
) -> dict[PlateKey, int]:
    """The ``(context, plate, perturbation)`` keys of an input and their cell counts.

    Args:
        data: The input's cells (controls and perturbed) with their labels.
        plates: The plate of every cell of ``data``.
        perturbations: ``None``: every (context, plate, perturbation) that has real cells
            in the input (a screen's own layout); else each of these perturbations on every
            plate of every context that has control cells.
        cells_per_perturbation: Cells per key; default: as many as the key's real cells,
            else the plate's control count.
    """
    cells = data.cells
    is_ctrl = cells["is_control"].to_numpy(dtype=bool)
    frame = pd.DataFrame(
        {"context": cells["context"].to_numpy(), "plate": plates, "pert": cells["perturbation"]}
    )
    real = frame[~is_ctrl].groupby(["context", "plate", "pert"], observed=True).size().to_dict()
    n_ctrl = frame[is_ctrl].groupby(["context", "plate"], observed=True).size().to_dict()
    if perturbations is None:
        wanted = sorted(real)
    else:
        wanted = [(c, pl, p) for (c, pl) in sorted(n_ctrl) for p in perturbations]
    return {k: int(cells_per_perturbation or real.get(k, n_ctrl.get(k[:2], 0))) for k in wanted}


def infer_plates(
    run: Runs,
    data: SplitCells,
    plates: np.ndarray,
    columns: ColumnsParams,
    *,
    perturbations: Sequence[str] | None = None,
    cells_per_perturbation: int | None = None,
    seed: int = 0,
    control_mean: bool = False,
    allow_unknown: bool = False,
    control_offset: Literal["keep", "subtract"] = "keep",
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Predict every plate of an input from its own controls, in cell-eval's form.

    Args:
        run: A trained run, or a seed ensemble's runs (their cells averaged).
        data: The input's cells in the model's space with their labels.
        plates: The plate (``columns.batch_col``) of every cell of ``data``.
        columns: Where the design lives (``batch_col`` names the output's plate column).
        perturbations: As :func:`plate_keys`.
        cells_per_perturbation: As :func:`plate_keys`.
        seed: Seed of the control sampling.
        control_mean: Start from the plate's control mean instead of its control cells.
        allow_unknown: Predict perturbations the model knows nothing about.
        control_offset: As :func:`~perturbflow.models.inference.predict.predict_cells`.

    Returns:
        The predictions (each context's real controls with their plates, then the
        predicted cells of every plate, the plate in ``columns.batch_col``) and a table of
        how each perturbation was encoded.

    Raises:
        InputError: No batch column, nothing to predict, an unknown perturbation or a plate
            without control cells: all before any prediction.
    """
    if not columns.batch_col:
        raise InputError("Per-plate prediction needs the plate column (--batch-col).")
    plates = np.asarray(plates).astype(str)
    keys = plate_keys(data, plates, perturbations, cells_per_perturbation)
    if not keys:
        raise InputError("No perturbation to predict on any plate.")
    pairs = list(dict.fromkeys((c, p) for c, _, p in keys))
    encoded = as_runs(run)[0].inputs.encode(pairs, data)
    check_known(encoded, allow_unknown=allow_unknown)
    predicted = predict_per_plate(
        run,
        data,
        plates,
        keys,
        seed=seed,
        control_mean=control_mean,
        allow_unknown=allow_unknown,
        control_offset=control_offset,
    )
    merged: dict[tuple[str, str], list[np.ndarray]] = {}
    labels: dict[tuple[str, str], list[str]] = {}
    for (context, plate, pert), cells in sorted(predicted.items()):
        merged.setdefault((context, pert), []).append(cells)
        labels.setdefault((context, pert), []).extend([plate] * len(cells))
    out = assemble_predictions(data, {k: np.vstack(v) for k, v in merged.items()}, columns)
    column = np.empty(out.n_obs, dtype=object)
    obs_context = out.obs["context"].astype(str).to_numpy()
    obs_pert = out.obs[columns.pert_col].astype(str).to_numpy()
    for context in np.unique(obs_context):
        rows = (obs_context == context) & (obs_pert == columns.control_label)
        column[rows] = plates[data.control_rows(context)]  # assembled in this order
    for (context, pert), plate_list in labels.items():
        column[(obs_context == context) & (obs_pert == pert)] = plate_list
    out.obs[columns.batch_col] = pd.Categorical(column.astype(str))
    return out, CellPredictions({}, encoded).sources()
