"""The pairing index as a table users can read (catalog dataset ``pairing_index``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.pairing_strategies import Pairing


def pairing_index_frame(
    design: PairingDesign, pert_rows: np.ndarray, pairing: Pairing, obs_names: pd.Index
) -> pd.DataFrame:
    """One row per perturbed cell: its context, batch and paired control (or mean group).

    Args:
        design: The cells' codes.
        pert_rows: The perturbed rows that were paired (same order as ``pairing``).
        pairing: The pairing of ``pert_rows``.
        obs_names: The AnnData's cell names (row order).

    Returns:
        A table indexed by the perturbed cell's name with ``row``, ``context``, ``batch``,
        ``control_row``, ``control`` (cell name, or the mean group's label for
        ``control_mean``) and ``fallback``.
    """
    context = np.asarray(design.context_labels, dtype=object)[design.context[pert_rows]]
    frame = pd.DataFrame(
        {
            "row": pert_rows.astype(np.int64),
            "context": pd.Categorical(context),
            "control_row": pairing.control_rows.astype(np.int64),
            "fallback": pairing.fallback.astype(bool),
        },
        index=pd.Index(np.asarray(obs_names)[pert_rows], name="cell"),
    )
    if design.batch is not None:
        batch = np.asarray(design.batch_labels, dtype=object)[design.batch[pert_rows]]
        frame.insert(2, "batch", pd.Categorical(batch))
    if pairing.mean_group is None:
        frame["control"] = np.asarray(obs_names)[pairing.control_rows]
    else:
        labels = np.array([".".join(map(str, g)) for g in pairing.mean_groups], dtype=object)
        frame["control"] = labels[pairing.mean_group]
    return frame
