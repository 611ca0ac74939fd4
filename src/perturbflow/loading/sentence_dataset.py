"""Reads the rows of a batch of sentence specs into the tensors a model trains on.

:class:`SentenceDataset` is indexed by the batches of
:class:`~perturbflow.loading.sentence_sampler.SentenceBatchSampler`: each batch's rows,
perturbed and control together, are read with one sorted call to the
:class:`~perturbflow.loading.h5reader.H5RowReader`, which turns them into contiguous range
reads. DataLoader workers run it; they only read rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from perturbflow.exceptions import InputError
from perturbflow.loading.h5reader import H5RowReader
from perturbflow.loading.sentence_sampler import SentenceSpec


class SentenceDataset(Dataset):
    """Reads the rows of a batch of sentence specs into tensors.

    Args:
        reader: Row reader of the expression space.
        group_pert: Perturbation index of each group.
        group_context: Context index of each group.
        batch_codes: Batch code of every cell (or ``None``).
        control_means: Mean control profiles when the pairing is ``control_mean``.
        all_reader: A second reader (e.g. every gene of ``X``) whose rows of the same cells
            are returned as ``pert_cell_all``/``ctrl_cell_all``, or ``None``.
        group_deltas: Mean response per group, for dose-interpolated specs (their cells
            are shifted by ``t * (delta_partner - delta_own)``), or ``None``.
    """

    def __init__(
        self,
        reader: H5RowReader,
        *,
        group_pert: np.ndarray,
        group_context: np.ndarray,
        batch_codes: np.ndarray | None,
        control_means: np.ndarray | None,
        all_reader: H5RowReader | None = None,
        group_deltas: np.ndarray | None = None,
    ) -> None:
        self.reader = reader
        self.group_deltas = group_deltas
        self.all_reader = all_reader
        self.group_pert = group_pert
        self.group_context = group_context
        self.batch_codes = batch_codes
        self.control_means = control_means

    def __len__(self) -> int:  # map-style only through the batch sampler
        raise TypeError("SentenceDataset is indexed by SentenceBatchSampler batches")

    def __getitem__(self, spec: SentenceSpec) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([spec])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, specs: Sequence[SentenceSpec]) -> dict[str, torch.Tensor]:
        pert = np.stack([s[0] for s in specs])
        ctrl = np.stack([s[1] for s in specs])
        groups = np.array([s[2] for s in specs])
        if self.control_means is None:
            rows = np.concatenate([pert.ravel(), ctrl.ravel()])
            values = self.reader.read(rows)
            n = pert.size
            pert_x, ctrl_x = values[:n], values[n:]
        else:
            pert_x = self.reader.read(pert.ravel())
            ctrl_x = self.control_means[ctrl.ravel()]
        shape = (*pert.shape, -1)
        out = {
            "pert_cell_emb": torch.from_numpy(np.ascontiguousarray(pert_x).reshape(shape)),
            "ctrl_cell_emb": torch.from_numpy(np.ascontiguousarray(ctrl_x).reshape(shape)),
            "pert_index": torch.from_numpy(self.group_pert[groups]),
            "context_index": torch.from_numpy(self.group_context[groups]),
            "pert_rows": torch.from_numpy(pert),
        }
        if self.batch_codes is not None:
            out["batch_index"] = torch.from_numpy(self.batch_codes[pert])
        if specs and len(specs[0]) == 5:
            _interpolation_fields(self, out, specs, groups)
        if self.all_reader is not None:
            values = self.all_reader.read(np.concatenate([pert.ravel(), ctrl.ravel()]))
            n = pert.size
            for name, part in (("pert_cell_all", values[:n]), ("ctrl_cell_all", values[n:])):
                out[name] = torch.from_numpy(np.ascontiguousarray(part).reshape(shape))
        return out


def _interpolation_fields(
    dataset: SentenceDataset,
    out: dict[str, torch.Tensor],
    specs: Sequence[tuple],
    groups: np.ndarray,
) -> None:
    """Shift interpolated sentences' cells; add ``mix_pert_index`` and ``mix_weight``."""
    mix = np.array([s[3] for s in specs], dtype=np.int64)
    weight = np.array([s[4] for s in specs], dtype=np.float32)
    partner = np.where(mix >= 0, mix, groups)
    if (mix >= 0).any():
        if dataset.group_deltas is None:
            raise InputError("Dose-interpolated sentences need the groups' mean responses.")
        shift = weight[:, None] * (dataset.group_deltas[partner] - dataset.group_deltas[groups])
        cells = out["pert_cell_emb"]
        out["pert_cell_emb"] = cells + torch.from_numpy(shift).to(cells.dtype).unsqueeze(1)
    out["mix_pert_index"] = torch.from_numpy(dataset.group_pert[partner])
    out["mix_weight"] = torch.from_numpy(weight)
