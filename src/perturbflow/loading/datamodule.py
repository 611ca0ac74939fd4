"""A Lightning DataModule of paired (control, perturbed) cell sentences read lazily from h5ad.

Design: sentences and their control pairing are drawn in the *main* process by an
epoch-aware batch sampler (:class:`SentenceBatchSampler`); DataLoader workers only read
rows. Drawing in the main process keeps sampling a pure function of ``(seed, epoch)``,
so it is fresh every epoch even with ``persistent_workers`` (a worker's copy of a
dataset would never see a new epoch) and identical whatever ``num_workers`` is. Each
batch's rows, perturbed and control together, are read with one sorted call to the
:class:`~perturbflow.loading.h5reader.H5RowReader`, which turns them into contiguous
range reads.

Epochs and ranks: Lightning calls ``set_epoch`` only on ``loader.sampler`` and
``loader.batch_sampler.sampler``, never on a batch sampler itself, so the batch sampler
exposes an :class:`EpochHandle` as its ``sampler``. Under DDP every rank draws the same
epoch from ``(seed, epoch)`` and keeps its own disjoint share of the shuffled sentences
(every ``world_size``-th one from its rank on), so ranks never train on the same sentence
in an epoch and each rank runs the same number of steps (DDP's collectives need that).
Lightning's own ``DistributedSampler`` cannot do this (it indexes a dataset by position,
and ours is indexed by batches of sentence specs), so trainers are built with
``use_distributed_sampler=False`` (:mod:`perturbflow.models.training.trainer`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from perturbflow.exceptions import InputError
from perturbflow.loading.control_inputs import control_means
from perturbflow.loading.dose_interpolation import (
    DoseInterpolation,
    dose_neighbours,
    group_deltas,
)
from perturbflow.loading.h5reader import H5RowReader
from perturbflow.loading.pairing import PairingDesign, get_pairing_strategy
from perturbflow.loading.sentences import CellGroups, cut_sentences, group_cells
from perturbflow.params import ColumnsParams, LoaderParams

logger = logging.getLogger(__name__)

SentenceSpec = tuple[np.ndarray, np.ndarray, int]  # perturbed rows, control rows/means, group
# with dose interpolation the specs carry two more entries: partner group (-1: none), weight


class EpochHandle:
    """What Lightning finds at ``loader.batch_sampler.sampler``: forwards ``set_epoch``.

    Args:
        owner: The batch sampler whose epoch it sets.
    """

    def __init__(self, owner: SentenceBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        """Set the owner's epoch (Lightning calls this at the start of every epoch)."""
        self.owner.set_epoch(epoch)


class SentenceBatchSampler(Sampler[list[SentenceSpec]]):
    """Yields batches of sentence specs, re-drawn every epoch from ``(seed, epoch)``.

    Args:
        groups: The (context, perturbation) cell groups of one split label.
        design: Integer codes of every cell, for control pairing.
        pairing: Name of the pairing strategy.
        pairing_kwargs: Its options (e.g. ``{"per": "batch"}`` for ``control_mean``).
        cell_set_len: Cells per sentence.
        batch_size: Sentences per batch.
        shuffle: Training mode (random sentences, shuffled order) or deterministic.
        seed: Base seed.
        interpolation: Dose-interpolation augmentation
            (:mod:`perturbflow.loading.dose_interpolation`), or ``None``.
        rank: This process's rank under DDP (0 otherwise).
        world_size: The number of DDP processes (1 otherwise). Each rank yields every
            ``world_size``-th sentence of the epoch's shuffled draw from ``rank`` on,
            ``n_sentences // world_size`` of them, so ranks are disjoint and equal.

    Raises:
        InputError: Fewer sentences than ranks, or a rank outside ``[0, world_size)``.
    """

    def __init__(
        self,
        groups: CellGroups,
        design: PairingDesign,
        *,
        pairing: str,
        pairing_kwargs: dict,
        cell_set_len: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        interpolation: DoseInterpolation | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.groups = groups
        self.interpolation = interpolation
        self.design = design
        self.strategy = get_pairing_strategy(pairing, **pairing_kwargs)
        self.cell_set_len = cell_set_len
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.sampler = EpochHandle(self)  # where Lightning looks for set_epoch
        sizes = groups.sizes
        self.n_sentences = int((np.maximum(1, -(-sizes // cell_set_len)) * (sizes > 0)).sum())
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"Rank {rank} of {world_size} processes: expected 0 <= rank < size.")
        if self.n_sentences < world_size:
            raise InputError(
                f"{self.n_sentences} sentences cannot be shared by {world_size} processes: "
                "lower loader.cell_set_len or the number of devices."
            )
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose sentences the next iteration yields (Lightning calls it)."""
        self.epoch = epoch

    @property
    def n_rank_sentences(self) -> int:
        """Sentences this rank yields per epoch (the same on every rank)."""
        return self.n_sentences // self.world_size

    def __len__(self) -> int:
        return -(-self.n_rank_sentences // self.batch_size)

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This epoch's sentences, their control rows (or mean-group ids) and groups."""
        rng = np.random.default_rng([self.seed, self.epoch])
        sentences, group_of = cut_sentences(
            self.groups, cell_set_len=self.cell_set_len, rng=rng if self.shuffle else None
        )
        # evaluation pairs are deterministic too: a fixed generator per call
        pair_rng = rng if self.shuffle else np.random.default_rng([self.seed, 0, 1])
        pairing = self.strategy.pair(self.design, sentences.ravel(), pair_rng)
        controls = pairing.control_rows if pairing.mean_group is None else pairing.mean_group
        controls = np.asarray(controls).reshape(sentences.shape)
        if self.shuffle:
            order = rng.permutation(len(sentences))
            sentences, controls, group_of = sentences[order], controls[order], group_of[order]
        return sentences, controls, group_of

    def __iter__(self) -> Iterator[list[SentenceSpec]]:
        sentences, controls, group_of = self.draw()
        mix = weight = None
        if self.interpolation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, 2])
            mix, weight = self.interpolation.draw(group_of, rng)
        if self.world_size > 1:  # this rank's disjoint share of the epoch's draw
            share = slice(self.rank, self.n_rank_sentences * self.world_size, self.world_size)
            sentences, controls, group_of = sentences[share], controls[share], group_of[share]
            if mix is not None:
                mix, weight = mix[share], weight[share]
        for start in range(0, len(sentences), self.batch_size):
            stop = start + self.batch_size
            span = range(start, min(stop, len(sentences)))
            if mix is None:
                yield [(sentences[i], controls[i], int(group_of[i])) for i in span]
            else:
                yield [
                    (sentences[i], controls[i], int(group_of[i]), int(mix[i]), float(weight[i]))
                    for i in span
                ]


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


def _context_labels(dataset: pd.Series, celltype: pd.Series) -> pd.Categorical:
    """``dataset.celltype`` per cell as a categorical, built from codes (no per-cell strings)."""
    codes, uniques = pd.MultiIndex.from_arrays([dataset, celltype]).factorize()
    labels = [f"{d}.{c}" for d, c in uniques]
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
        split_table: Per-cell split table (``dataset``, ``context``, ``perturbation``,
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
                "context": _context_labels(table["dataset"], table["context"]),
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
