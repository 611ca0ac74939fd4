"""The ST model as a LightningModule: steps, losses, validation pearson_delta, optimiser.

The network is :class:`~perturbflow.models.components.network.StateTransitionNet`. A batch from
:class:`~perturbflow.loading.datamodule.PerturbationDataModule` carries the perturbed and
control sentences, the perturbation and context index of each sentence, and batch codes;
the perturbation vector of a sentence is looked up in a table built by
:class:`~perturbflow.models.components.inputs.PerturbationInputs` (one row per (context,
perturbation) key), so unseen perturbations are encoded from what generalises, never from
an untrained slot.

Hyperparameters are saved as plain dicts, so a Lightning checkpoint loads with
``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from perturbflow.models.components.losses import STLoss, pearson_rows
from perturbflow.models.components.network import Architecture, StateTransitionNet
from perturbflow.params import LossParams, OptimizerParams


class STModule(pl.LightningModule):
    """Trains a :class:`StateTransitionNet` on paired control/perturbed sentences.

    Args:
        arch: Network sizes (a dict of :class:`Architecture` fields).
        loss: Loss parameters (dict of :class:`LossParams` fields).
        optimizer: Optimiser parameters (dict of :class:`OptimizerParams` fields).
        max_steps: Total steps (the cosine schedule ends there).
        identity_dropout: Probability of hiding a training sentence's identity part.
        pert_table: ``[n_keys, P]`` perturbation vectors (not saved with the weights).
        key_index: ``[n_contexts, n_perturbations]`` row of each key in ``pert_table``
            (``-1``: not a key of this split, encoded as zeros).
        identity_mask: ``[P]`` identity columns of a perturbation vector.
        prior_table: ``[n_keys, G]`` prior delta of each key (training keys' out-of-fold;
            zeros for the control), aligned with ``pert_table``, or ``None``
            (:mod:`perturbflow.models.components.prior`).
    """

    def __init__(
        self,
        arch: dict[str, Any],
        loss: dict[str, Any],
        optimizer: dict[str, Any],
        max_steps: int,
        identity_dropout: float = 0.0,
        pert_table: np.ndarray | None = None,
        key_index: np.ndarray | None = None,
        identity_mask: np.ndarray | None = None,
        prior_table: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        # plain dicts and numbers only: a checkpoint then loads with weights_only=True
        self.save_hyperparameters(
            ignore=["pert_table", "key_index", "identity_mask", "prior_table"]
        )
        self.arch = Architecture(**arch)
        self.net = StateTransitionNet(self.arch)
        self.loss_params = LossParams(**loss)
        self.optim_params = OptimizerParams(**optimizer)
        self.criterion = STLoss(self.loss_params)
        p = self.arch.perturbation_dim
        table = np.zeros((0, p), np.float32) if pert_table is None else pert_table
        # a zero row at the end: keys outside the table (index -1) and the control
        table = np.vstack([np.asarray(table, np.float32), np.zeros((1, p), np.float32)])
        self.register_buffer("pert_table", torch.from_numpy(table), persistent=False)
        index = np.zeros((0, 0), np.int64) if key_index is None else np.asarray(key_index)
        self.register_buffer(
            "key_index", torch.from_numpy(index.astype(np.int64)), persistent=False
        )
        mask = np.zeros(p, bool) if identity_mask is None else np.asarray(identity_mask, bool)
        self.register_buffer("identity_mask", torch.from_numpy(mask), persistent=False)
        if prior_table is None:
            self.prior_table = None
        else:  # the same extra zero row as pert_table
            g = np.asarray(prior_table, np.float32)
            g = np.vstack([g, np.zeros((1, g.shape[1]), np.float32)])
            self.register_buffer("prior_table", torch.from_numpy(g), persistent=False)
        self._val: dict[tuple[int, int], list[torch.Tensor]] = {}

    # ---- inputs ---------------------------------------------------------------------
    def _rows(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Row of each sentence's key in ``pert_table`` (the zero row for unknown keys)."""
        rows = self.key_index[batch["context_index"], batch["pert_index"]]
        return torch.where(rows < 0, self.pert_table.shape[0] - 1, rows)

    def prior_deltas(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``[B, G]`` prior deltas of a batch's sentences, or ``None`` without a prior."""
        return None if self.prior_table is None else self.prior_table[self._rows(batch)]

    def perturbation_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, P]`` perturbation vectors of a batch's sentences (identity dropout in training)."""
        vectors = self.pert_table[self._rows(batch)]
        if "mix_weight" in batch:  # dose interpolation: blend with the adjacent dose's vector
            partner = self.pert_table[self._rows({**batch, "pert_index": batch["mix_pert_index"]})]
            weight = batch["mix_weight"].to(vectors.dtype).unsqueeze(1)
            vectors = (1 - weight) * vectors + weight * partner
        rate = self.hparams["identity_dropout"]
        if self.training and rate > 0 and bool(self.identity_mask.any()):
            hide = torch.rand(vectors.shape[0], 1, device=vectors.device) < rate
            vectors = torch.where(hide & self.identity_mask, torch.zeros_like(vectors), vectors)
        return vectors

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predicted perturbed sentences (and all-gene predictions with a decoder)."""
        return self.net(
            batch["ctrl_cell_emb"],
            self.perturbation_vectors(batch),
            batch.get("batch_index"),
            batch.get("ctrl_cell_all"),
            self.prior_deltas(batch),
        )

    def _loss(
        self, batch: dict[str, torch.Tensor], stage: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred, pred_all = self(batch)
        terms = self.criterion(pred, batch["pert_cell_emb"], batch["ctrl_cell_emb"])
        total = terms.total
        if pred_all is not None and "pert_cell_all" in batch:
            decoded = self.criterion.set_distance(pred_all, batch["pert_cell_all"])
            total = total + self.loss_params.decoder_weight * decoded
            self.log(f"{stage}/decoder_loss", decoded, batch_size=len(pred))
        values = {
            f"{stage}/loss": total,
            f"{stage}/set_distance": terms.base,
            f"{stage}/delta_mse": terms.delta_mse,
            f"{stage}/delta_pearson_loss": terms.delta_pearson,
        }
        self.log_dict(values, batch_size=len(pred), prog_bar=False)
        return total, pred

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimiser step's loss."""
        total, _ = self._loss(batch, "train")
        self.log("loss", total, prog_bar=True, logger=False, batch_size=len(batch["pert_rows"]))
        return total

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Loss, and per-(context, perturbation) sums for the epoch's pearson_delta."""
        _, pred = self._loss(batch, "val")
        # control sentences (the all-zero vector) have no effect to correlate
        perturbed = self.perturbation_vectors(batch).any(dim=1).tolist()
        keys = torch.stack([batch["context_index"], batch["pert_index"]], dim=1).tolist()
        for i, key in enumerate(map(tuple, keys)):
            if not perturbed[i]:
                continue
            sums = torch.stack(
                [
                    pred[i].sum(0),
                    batch["pert_cell_emb"][i].sum(0),
                    batch["ctrl_cell_emb"][i].sum(0),
                ]
            ).double()
            if key in self._val:
                self._val[key][0] += sums
                self._val[key][1] += pred.shape[1]
            else:
                self._val[key] = [sums, pred.shape[1]]

    def on_validation_epoch_end(self) -> None:
        """Mean pearson_delta over the validation perturbations (checkpoint ``best`` uses it)."""
        if not self._val:
            return
        sums = torch.stack([v[0] / v[1] for v in self._val.values()])  # [K, 3, G]
        delta_pred = sums[:, 0] - sums[:, 2]
        delta_real = sums[:, 1] - sums[:, 2]
        informative = delta_real.abs().sum(dim=1) > 0
        self._val = {}
        if informative.any():
            r = pearson_rows(delta_pred[informative], delta_real[informative])
            score = torch.nan_to_num(r, nan=0.0).mean().float()
            self.log("val/pearson_delta", score, prog_bar=True, sync_dist=True)

    # ---- optimiser ------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (decay on weight matrices only) with warmup + cosine/constant schedule."""
        o = self.optim_params
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            # biases, norms and embeddings keep their scale: weight decay on matrices only
            is_matrix = param.ndim >= 2 and "batch_encoder" not in name
            (decay if is_matrix else no_decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": o.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=o.lr,
        )
        schedule = lr_lambda(
            warmup=o.warmup_steps,
            total=self.hparams["max_steps"],
            kind=o.schedule,
            floor=o.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def lr_lambda(*, warmup: int, total: int, kind: str, floor: float):
    """The learning-rate multiplier per step: linear warmup, then constant or cosine."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def architecture_dict(arch: Architecture) -> dict[str, Any]:
    """Plain-dict form of an :class:`Architecture` (saved in configs and checkpoints)."""
    return dataclasses.asdict(arch)
