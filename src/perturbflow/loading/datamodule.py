"""A Lightning DataModule of paired (control, perturbed) cell sentences read lazily from h5ad.

Design: sentences and their control pairing are drawn in the *main* process by an
epoch-aware batch sampler
(:class:`~perturbflow.loading.sentence_sampler.SentenceBatchSampler`, which also tells how
epochs and DDP ranks share the sentences); DataLoader workers only read rows
(:class:`~perturbflow.loading.sentence_dataset.SentenceDataset`). Each batch's rows,
perturbed and control together, are read with one sorted call to the
:class:`~perturbflow.loading.h5reader.H5RowReader`, which turns them into contiguous
range reads. :class:`PerturbationDataModule` builds both for each split label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from perturbflow.design import context_key
from perturbflow.exceptions import InputError
from perturbflow.loading.control_inputs import control_means
from perturbflow.loading.dose_interpolation import (
    DoseInterpolation,
    dose_neighbours,
    group_deltas,
)
from perturbflow.loading.h5reader import H5RowReader
from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.sentence_dataset import SentenceDataset
from perturbflow.loading.sentence_sampler import SentenceBatchSampler
from perturbflow.loading.sentences import group_cells
from perturbflow.params import ColumnsParams, LoaderParams

logger = logging.getLogger(__name__)


def _context_labels(dataset: pd.Series, celltype: pd.Series) -> pd.Categorical:
    """``dataset.celltype`` per cell as a categorical, built from codes (no per-cell strings)."""
    codes, uniques = pd.MultiIndex.from_arrays([dataset, celltype]).factorize()
    labels = [context_key(d, c) for d, c in uniques]
    return pd.Categorical.from_codes(codes, categories=labels)


def _passthrough(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dataset already returns a collated batch (module level: picklable)."""
    return batch


@dataclass(frozen=True)
class Vocabulary:
    """Perturbation and context labels, by index (saved as JSON in a run directory)."""

    perturbations: list[str]
    contexts: list[str]


class PerturbationDataModule(pl.LightningDataModule):
    """Paired control/perturbed sentences of one named split, read lazily from an h5ad.

    Args:
        path: The preprocessed h5ad file.
        obs: Its ``obs`` (in file row order), e.g. from a backed AnnData.
        split_table: Per-cell split table (``dataset``, ``celltype``, ``perturbation``,
            ``is_control``, one column per named split), indexed like ``obs``.
        split_name: Which named split to serve.
        columns: Column names of the design.
        params: Loader parameters (sentence length, batch size, workers, pairing, seed).
        all_key: A second matrix (``"X"``: every gene) served beside the loader's space as
            ``pert_cell_all``/``ctrl_cell_all`` (the ST model's ``all`` output space), or
            ``None``. Not available with ``control_mean`` pairing.
        dose_interpolation: Probability that a training sentence of a dosed drug becomes
            an intermediate-dose sentence (:mod:`perturbflow.loading.dose_interpolation`);
            0 (the default) switches the augmentation off.
        reader: An open reader of the loader's space of ``path`` to use instead of opening
            another one (e.g. the one :class:`~perturbflow.splits.split_data.SplitData` reads
            its training effects with: a preloaded matrix is then held once, not twice).
    """

    def __init__(
        self,
        path: str,
        obs: pd.DataFrame,
        split_table: pd.DataFrame,
        split_name: str,
        columns: ColumnsParams,
        params: LoaderParams,
        all_key: str | None = None,
        dose_interpolation: float = 0.0,
        reader: H5RowReader | None = None,
    ) -> None:
        super().__init__()
        key = params.obsm_key or "X"
        if reader is not None and (reader.key != key or reader.path != Path(path).resolve()):
            raise InputError(
                f"The reader given reads {reader.path}[{reader.key}], the loader {path}[{key}]."
            )
        if dose_interpolation and all_key is not None:
            raise InputError(
                "Dose interpolation shifts the cells of the loader's space only: it is not "
                "available with the all-gene output space."
            )
        self.dose_interpolation = float(dose_interpolation)
        if all_key is not None and params.pairing == "control_mean":
            raise InputError(
                "The all-gene output space needs control cells, not control means: "
                "use another loader.pairing than 'control_mean'."
            )
        self.all_key = all_key
        self.all_reader: H5RowReader | None = None
        if split_name not in split_table.columns:
            raise InputError(f"Split {split_name!r} is not in the split table.")
        missing = obs.index.difference(split_table.index)
        if len(missing):
            raise InputError(
                f"{len(missing)} cells of {path} are not in the split table "
                f"(e.g. {list(missing[:3])}); rebuild the splits from the same file."
            )
        self.path = str(path)
        self.params = params
        self.split_name = split_name
        table = split_table if split_table.index.equals(obs.index) else split_table.loc[obs.index]
        self.cells = pd.DataFrame(
            {
                "context": _context_labels(table["dataset"], table["celltype"]),
                "perturbation": table["perturbation"].astype("category").to_numpy(),
                "is_control": table["is_control"].astype(bool).to_numpy(),
                split_name: table[split_name].astype("category").to_numpy(),
            },
            index=obs.index,
        )
        self.design = PairingDesign.from_obs(obs, columns)
        self._control_label = columns.control_label
        self.vocabulary = Vocabulary(
            perturbations=sorted(map(str, self.cells["perturbation"].unique())),
            contexts=sorted(map(str, self.cells["context"].unique())),
        )
        self.reader: H5RowReader | None = reader
        self._means: np.ndarray | None = None

    def setup(self, stage: str | None = None) -> None:
        """Open the reader (lazy or preloaded under the memory budget)."""
        if self.reader is None:
            self.reader = H5RowReader(
                self.path,
                key=self.params.obsm_key or "X",
                preload=self.params.preload,
                memory_budget_mib=self.params.memory_budget_mib,
            )
        if self.all_key is not None and self.all_reader is None:
            self.all_reader = H5RowReader(
                self.path,
                key=self.all_key,
                preload=self.params.preload,
                memory_budget_mib=self.params.memory_budget_mib,
            )

    def _loader(self, label: str, *, shuffle: bool) -> DataLoader:
        self.setup()
        groups = group_cells(
            self.cells,
            split_col=self.split_name,
            label=label,
            include_controls=self.params.include_control_sentences,
        )
        if not groups.keys:
            raise InputError(f"Split {self.split_name!r} has no {label} cells to load.")
        p_index = {p: i for i, p in enumerate(self.vocabulary.perturbations)}
        c_index = {c: i for i, c in enumerate(self.vocabulary.contexts)}
        sampler = SentenceBatchSampler(
            groups,
            self.design,
            pairing=self.params.pairing,
            pairing_kwargs=dict(self.params.pairing_kwargs),
            cell_set_len=self.params.cell_set_len,
            batch_size=self.params.batch_size,
            shuffle=shuffle,
            seed=self.params.seed,
            # training is shared between DDP ranks; validation and test are read whole by
            # every rank, so a key's validation score is computed from all its cells
            **(self._rank_and_size() if shuffle else {}),
        )
        deltas = None
        if shuffle and self.dose_interpolation > 0:
            neighbours = dose_neighbours(groups.keys, control_label=self._control_label)
            if not neighbours.n_interpolable:
                logger.warning("Dose interpolation is on but no drug has two training doses.")
            which = np.flatnonzero([len(p) > 0 for p in neighbours.partners])
            deltas = group_deltas(self.reader.read, self.design, groups.rows, which)
            sampler.interpolation = DoseInterpolation(neighbours, self.dose_interpolation)
            logger.info(
                "Dose interpolation (rate %.2f): %d of %d training groups have adjacent doses.",
                self.dose_interpolation,
                neighbours.n_interpolable,
                len(groups.keys),
            )
        dataset = SentenceDataset(
            self.reader,
            group_pert=np.array([p_index[p] for _, p in groups.keys], dtype=np.int64),
            group_context=np.array([c_index[c] for c, _ in groups.keys], dtype=np.int64),
            batch_codes=None if self.design.batch is None else self.design.batch.astype(np.int64),
            control_means=self._control_means(sampler),
            all_reader=self.all_reader,
            group_deltas=deltas,
        )
        workers = self.params.num_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=_passthrough,
            num_workers=workers,
            pin_memory=self.params.pin_memory,
            persistent_workers=self.params.persistent_workers and workers > 0,
            prefetch_factor=self.params.prefetch_factor if workers > 0 else None,
        )

    def _rank_and_size(self) -> dict[str, int]:
        """This process's DDP rank and the world size (from the attached trainer, if any)."""
        trainer = self.trainer
        if trainer is not None:
            return {"rank": int(trainer.global_rank), "world_size": int(trainer.world_size)}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return {
                "rank": torch.distributed.get_rank(),
                "world_size": torch.distributed.get_world_size(),
            }
        return {"rank": 0, "world_size": 1}

    def _control_means(self, sampler: SentenceBatchSampler) -> np.ndarray | None:
        """Mean control profiles for ``control_mean`` (read once, shared by all loaders)."""
        if self.params.pairing != "control_mean":
            return None
        if self._means is None:
            self._means = control_means(self.reader.read, self.design, sampler.strategy)
        return self._means

    def train_dataloader(self) -> DataLoader:
        """Random sentences, fresh every epoch, shuffled."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Deterministic validation sentences."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Deterministic test sentences."""
        return self._loader("test", shuffle=False)
