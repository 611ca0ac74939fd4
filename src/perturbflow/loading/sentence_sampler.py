"""The epoch-aware batch sampler of cell sentences and their control pairing.

Sentences and their control pairing are drawn in the *main* process by
:class:`SentenceBatchSampler`; DataLoader workers only read rows
(:class:`~perturbflow.loading.sentence_dataset.SentenceDataset`). Drawing in the main
process keeps sampling a pure function of ``(seed, epoch)``, so it is fresh every epoch even
with ``persistent_workers`` (a worker's copy of a dataset would never see a new epoch) and
identical whatever ``num_workers`` is.

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

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from perturbflow.exceptions import InputError
from perturbflow.loading.dose_interpolation import DoseInterpolation
from perturbflow.loading.pairing import get_pairing_strategy
from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.sentences import CellGroups, cut_sentences

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
