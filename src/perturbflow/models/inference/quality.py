"""Do predicted cells look like cells? Variability and control offset of predictions.

STATE's predicted cells were about 10x less variable per gene than real ones, and it moved
the held-out context's control cells. Two figures catch both:

- ``std_ratio`` (:mod:`perturbflow.evaluation.variability`): per gene, the standard
  deviation of the predicted cells of a perturbation over that of its real cells; the
  median over genes with real variation. 1 is "as variable as real cells"; the target is
  0.5 to 2.
- :func:`control_offset`: the shift the model puts on control cells given the control
  label (no perturbation): the RMS over genes of mean(prediction) - mean(input), also
  relative to the RMS of the real mean deltas of the context. The target is near zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.params import ColumnsParams
from perturbflow.splits.data import SplitCells


def control_offset(
    predicted_controls: Mapping[str, np.ndarray],
    data: SplitCells,
    label: str = "test",
) -> dict[str, dict[str, float]]:
    """Offset the model puts on each context's controls, absolute and relative.

    Args:
        predicted_controls: The model's prediction for the control label per context,
            from that context's control cells.
        data: Expression and labels (controls and held-out cells).
        label: Which held-out cells give the real deltas it is compared with.

    Returns:
        Per context ``{"rms_offset": ..., "rms_real_delta": ..., "relative": ...}``.
    """
    out = {}
    for context, pred in predicted_controls.items():
        ctrl = data.control_mean(context)
        offset = np.asarray(pred, dtype=np.float64).mean(axis=0) - ctrl
        deltas = [
            data.X[data.perturbation_rows(context, p, label)].mean(axis=0) - ctrl
            for p in data.heldout_perturbations(context, label)
        ]
        rms_real = float(np.sqrt(np.mean(np.square(deltas)))) if deltas else float("nan")
        rms = float(np.sqrt(np.mean(offset**2)))
        out[context] = {
            "rms_offset": rms,
            "rms_real_delta": rms_real,
            "relative": rms / rms_real if rms_real and rms_real > 0 else float("nan"),
        }
    return out


def control_offset_report(
    run: TrainedRun, data: SplitCells, columns: ColumnsParams, *, seed: int, label: str = "test"
) -> dict[str, Any]:
    """The model's control offset in every context with ``label`` perturbations.

    Every control cell of those contexts is predicted with the control label; the report
    holds :func:`control_offset` per context and its mean relative offset
    (``st_quality.json``).
    """
    contexts = data.heldout_contexts(label)
    control = columns.control_label
    predicted = predict_cells(
        run, data, {(c, control): len(data.control_rows(c)) for c in contexts}, seed=seed
    )
    offsets = control_offset({c: predicted.cells[(c, control)] for c in contexts}, data, label)
    relative = [o["relative"] for o in offsets.values()]
    return {
        "run_dir": str(run.path),
        "control_offset": offsets,
        "mean_relative_control_offset": float(np.nanmean(relative)) if relative else float("nan"),
    }
