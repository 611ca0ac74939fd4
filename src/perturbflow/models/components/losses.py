"""Training losses of the ST model.

- The *set distance* between a predicted and a real sentence of cells: the energy distance
  (STATE's default) or a debiased sinkhorn divergence, both from geomloss
  (``SamplesLoss``, batched over sentences), or a plain MSE between paired cells.
- The *delta-aware* terms of seed 004, computed on **sentence means**: a sentence's delta
  is the mean of its (predicted or real) perturbed cells minus the mean of its control
  cells. cell-eval's ``pearson_delta`` is exactly this quantity on the whole perturbation,
  and the per-cell difference between a perturbed cell and the random control it was
  paired with is mostly the two cells' own noise, so seed 004's per-cell version is not
  used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from geomloss import SamplesLoss

from perturbflow.params import LossParams


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (``[B, D] -> [B]``)."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    num = (a * b).sum(dim=-1)
    den = torch.sqrt((a * a).sum(dim=-1) * (b * b).sum(dim=-1) + eps)
    return num / den


def sentence_deltas(
    pred: torch.Tensor, real: torch.Tensor, ctrl: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and real mean deltas per sentence (``[B, S, D] -> [B, D]`` each)."""
    base = ctrl.mean(dim=1)
    return pred.mean(dim=1) - base, real.mean(dim=1) - base


@dataclass
class LossTerms:
    """The parts of a loss (logged separately) and their weighted total."""

    total: torch.Tensor
    base: torch.Tensor
    delta_mse: torch.Tensor
    delta_pearson: torch.Tensor


class STLoss(torch.nn.Module):
    """Set distance + weighted delta MSE + weighted (1 - delta Pearson).

    Args:
        params: Loss parameters.
    """

    def __init__(self, params: LossParams) -> None:
        super().__init__()
        self.params = params
        if params.name == "energy":
            self.samples = SamplesLoss("energy", backend="tensorized")
        elif params.name == "sinkhorn":
            self.samples = SamplesLoss("sinkhorn", p=2, blur=params.blur, backend="tensorized")
        elif params.name == "mse":
            self.samples = None
        else:  # pydantic already checks the literal; a notebook user may not
            raise ValueError(f"Unknown loss {params.name!r}: energy, sinkhorn or mse.")

    def set_distance(self, pred: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Mean over sentences of the distance between predicted and real cell sets."""
        if self.samples is None:
            return torch.mean((pred - real) ** 2)
        # geomloss works in float32; mixed precision would hand it half tensors
        return self.samples(pred.float(), real.float()).mean()

    def forward(self, pred: torch.Tensor, real: torch.Tensor, ctrl: torch.Tensor) -> LossTerms:
        """All terms for ``[B, S, D]`` predicted, real and control sentences."""
        p = self.params
        zero = pred.new_zeros(())
        base = self.set_distance(pred, real) if p.base_weight > 0 else zero
        d_mse, d_pearson = zero, zero
        if p.delta_mse_weight > 0 or p.delta_pearson_weight > 0:
            d_pred, d_real = sentence_deltas(pred.float(), real.float(), ctrl.float())
            if p.delta_mse_weight > 0:
                d_mse = torch.mean((d_pred - d_real) ** 2)
            if p.delta_pearson_weight > 0:
                d_pearson = 1.0 - pearson_rows(d_pred, d_real).mean()
        total = p.base_weight * base + p.delta_mse_weight * d_mse
        total = total + p.delta_pearson_weight * d_pearson
        return LossTerms(total=total, base=base, delta_mse=d_mse, delta_pearson=d_pearson)
