"""The per-gene shift (and optional scale) shift and its MMD fitting loop.

The shift moves the **target's control expression** (cells x the model's genes, in the
model's input space: log1p HVGs, *not* counts and *not* embeddings) so that the frozen
basal encoder maps it onto the source domain's control embeddings::

    adapted = target_expression * exp(log_scale) + shift          (per gene)
    minimise  MMD^2( basal_encoder(adapted), source_embeddings )

Only the shift's parameters are optimised; the network's weights are frozen (no
gradient reaches them, tested). Minibatches, the fixed evaluation sample and the
bandwidth heuristic are all seeded; the evaluation MMD is logged every ``eval_every``
steps (the MMD curve), training stops early when it stops improving and the best
shift is kept.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from perturbflow.adaptation.config import ShiftFitParams
from perturbflow.adaptation.mmd import median_bandwidth, mmd2, multiscale_bandwidths
from perturbflow.exceptions import InputError

logger = logging.getLogger(__name__)

#: Final learning rate of the cosine schedule, as a fraction of ``lr``.
MIN_LR_RATIO = 0.05
#: Below this many cells per side the minibatch MMD is too noisy to trust (a warning).
FEW_CELLS = 32


class GeneShift(nn.Module):
    """``y = x * exp(log_scale) + shift`` per gene; the identity at initialisation.

    Args:
        n_genes: Width of the expression space.
        scale: Learn a per-gene scale (kept positive through its logarithm).
    """

    def __init__(self, n_genes: int, *, scale: bool) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(n_genes))
        self.log_scale = nn.Parameter(torch.zeros(n_genes)) if scale else None

    @property
    def kind(self) -> str:
        """``shift`` or ``shift_scale``."""
        return "shift" if self.log_scale is None else "shift_scale"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapted expression ``[n, G]``."""
        if self.log_scale is not None:
            x = x * self.log_scale.exp()
        return x + self.shift

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward`: from the adapted (source-like) space back to the target's."""
        y = y - self.shift
        if self.log_scale is not None:
            y = y * torch.exp(-self.log_scale)
        return y

    @torch.no_grad()
    def transform(self, x: np.ndarray) -> np.ndarray:
        """:meth:`forward` on a numpy matrix (float32)."""
        p = self.shift
        out = self(torch.as_tensor(np.asarray(x, dtype=np.float32), device=p.device))
        return out.cpu().numpy()

    @torch.no_grad()
    def inverse_transform(self, y: np.ndarray) -> np.ndarray:
        """:meth:`inverse` on a numpy matrix (float32)."""
        p = self.shift
        out = self.inverse(torch.as_tensor(np.asarray(y, dtype=np.float32), device=p.device))
        return out.cpu().numpy()


@dataclass(frozen=True)
class ShiftFit:
    """A fitted shift and how the fitting went.

    Attributes:
        shift: The best shift (lowest evaluation MMD), on the CPU.
        curve: One row per evaluation: ``step``, ``eval_mmd2`` (fixed evaluation sample),
            ``batch_mmd2`` (mean minibatch MMD since the last evaluation; NaN at step 0).
        bandwidths: The RBF bandwidths used throughout.
        mmd_before: Evaluation MMD of the unadapted target (step 0).
        mmd_after: Evaluation MMD of the returned shift.
        best_step: The step of the returned shift.
        steps: Steps run.
        stopped_early: Whether early stopping ended the fit before ``max_steps``.
        n_target: Target control cells.
        n_source: Source embeddings.
    """

    shift: GeneShift
    curve: pd.DataFrame
    bandwidths: list[float]
    mmd_before: float
    mmd_after: float
    best_step: int
    steps: int
    stopped_early: bool
    n_target: int
    n_source: int


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored afterwards."""
    flags = [p.requires_grad for p in module.parameters()]
    was_training = module.training
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        module.train(was_training)


@torch.no_grad()
def embed(
    encoder: nn.Module, X: np.ndarray | torch.Tensor, *, chunk_size: int, device: str = "cpu"
) -> np.ndarray:
    """``encoder(X)`` in chunks of ``chunk_size`` cells, eval mode, as float32 numpy."""
    with frozen(encoder):
        out = []
        for start in range(0, len(X), chunk_size):
            chunk = torch.as_tensor(np.asarray(X[start : start + chunk_size], dtype=np.float32))
            out.append(encoder(chunk.to(device)).float().cpu())
    width = _out_width(encoder)
    return torch.cat(out).numpy() if out else np.zeros((0, width), dtype=np.float32)


def _out_width(encoder: nn.Module) -> int:
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else 0


def _check_inputs(target: np.ndarray, source: np.ndarray, encoder: nn.Module) -> None:
    if target.ndim != 2 or len(target) == 0:
        raise InputError(
            "The target control set is empty: the shift is fitted on the target's "
            "control cells (expression in the model's input space); check the control "
            "label and the target context."
        )
    if source.ndim != 2 or len(source) == 0:
        raise InputError(
            "The source control set is empty: no source embedding to align the target to; "
            "check the source files, their control label and the source cell types."
        )
    if len(target) < 2 or len(source) < 2:
        raise InputError(
            f"An MMD needs at least 2 cells per side: {len(target)} target and "
            f"{len(source)} source control cells."
        )
    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    if linears and linears[0].in_features != target.shape[1]:
        raise InputError(
            f"The target expression has {target.shape[1]} genes, the basal encoder reads "
            f"{linears[0].in_features}: align it to the model's genes first "
            "(perturbflow.models.inference.gene_space.aligned_matrix)."
        )
    with torch.no_grad(), frozen(encoder):
        width = encoder(torch.as_tensor(target[:2], dtype=torch.float32)).shape[1]
    if width != source.shape[1]:
        raise InputError(
            f"The source embeddings have {source.shape[1]} columns, the basal encoder "
            f"outputs {width}: were they computed with another model?"
        )
    for name, n in (("target", len(target)), ("source", len(source))):
        if n < FEW_CELLS:
            logger.warning(
                "Only %d %s control cells: the MMD estimate is noisy and the shift may fit noise.",
                n,
                name,
            )


def _evaluation_cells(
    target: torch.Tensor, source: torch.Tensor, n_cells: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed random subsets of both sides (the same cells at every evaluation)."""
    n_eval = min(n_cells, len(target), len(source))
    eval_t = target[torch.randperm(len(target), generator=gen)[:n_eval].to(target.device)]
    eval_s = source[torch.randperm(len(source), generator=gen)[:n_eval].to(source.device)]
    return eval_t, eval_s


def _optimise(
    shift: GeneShift,
    loss: torch.Tensor,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler | None,
    l2_weight: float,
) -> float:
    """One optimiser step on the batch MMD (plus the L2 penalty); returns the batch MMD."""
    batch_mmd = float(loss.detach())
    if l2_weight:
        loss = loss + l2_weight * sum(p.pow(2).mean() for p in shift.parameters())
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    if schedule is not None:
        schedule.step()
    return batch_mmd


def _result(
    shift: GeneShift, tracker: _BestState, bandwidths: list[float], steps: int, n_t: int, n_s: int
) -> ShiftFit:
    """The fit's outcome, logged."""
    logger.info(
        "Shift fit: MMD^2 %.4g -> %.4g (best step %d of %d%s)",
        tracker.before,
        tracker.best,
        tracker.best_step,
        steps,
        ", stopped early" if tracker.stopped else "",
    )
    return ShiftFit(
        shift=shift,
        curve=pd.DataFrame(tracker.rows, columns=["step", "eval_mmd2", "batch_mmd2"]),
        bandwidths=bandwidths,
        mmd_before=tracker.before,
        mmd_after=tracker.best,
        best_step=tracker.best_step,
        steps=steps,
        stopped_early=tracker.stopped,
        n_target=n_t,
        n_source=n_s,
    )


def fit_shift(
    encoder: nn.Module,
    target_expression: np.ndarray,
    source_embeddings: np.ndarray,
    params: ShiftFitParams,
    *,
    device: str = "cpu",
) -> ShiftFit:
    """Fit a per-gene shift (and optional scale) of the target's control expression.

    Args:
        encoder: The run's frozen basal encoder (``TrainedRun.net.basal_encoder``).
        target_expression: The target's control cells in the model's input space
            (cells x the model's genes, log1p), never embeddings or counts.
        source_embeddings: ``encoder(source controls)`` (cells x the embedding width).
        params: Learning rate, steps, minibatch size, early stopping, bandwidths, seed.
        device: Where the fit runs (the data are moved there once).

    Returns:
        The best shift and the MMD curve.

    Raises:
        InputError: An empty control set, fewer than 2 cells per side, or widths that do
            not match the encoder.
    """
    target_np = np.asarray(target_expression, dtype=np.float32)
    source_np = np.asarray(source_embeddings, dtype=np.float32)
    _check_inputs(target_np, source_np, encoder)
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    target = torch.from_numpy(target_np).to(device)
    source = torch.from_numpy(source_np).to(device)
    n_t, n_s = len(target), len(source)
    batch = min(params.batch_size, n_t, n_s)
    eval_t, eval_s = _evaluation_cells(target, source, params.eval_cells, gen)
    shift = GeneShift(target.shape[1], scale=params.scale).to(device)
    optimiser, schedule = _optimiser(shift, params)
    with frozen(encoder):
        bandwidths = _bandwidths(encoder, eval_t, eval_s, params, gen)

        def evaluate() -> float:
            with torch.no_grad():
                return float(mmd2(encoder(shift(eval_t)), eval_s, bandwidths))

        tracker = _BestState(evaluate(), shift)
        logger.info(
            "Shift fit: %d target, %d source cells, batch %d, bandwidths %s, MMD^2 %.4g",
            n_t,
            n_s,
            batch,
            [round(b, 4) for b in bandwidths],
            tracker.best,
        )
        running: list[float] = []
        step = 0
        for step in range(1, params.max_steps + 1):
            ti = torch.randperm(n_t, generator=gen)[:batch].to(device)
            si = torch.randperm(n_s, generator=gen)[:batch].to(device)
            loss = mmd2(encoder(shift(target[ti])), source[si], bandwidths)
            running.append(_optimise(shift, loss, optimiser, schedule, params.l2_weight))
            if step % params.eval_every and step != params.max_steps:
                continue
            if tracker.update(step, evaluate(), float(np.mean(running)), shift, params):
                break
            running = []
    shift.load_state_dict(tracker.state)
    return _result(shift.cpu().requires_grad_(False), tracker, bandwidths, step, n_t, n_s)


def _optimiser(shift: nn.Module, params: ShiftFitParams) -> tuple[torch.optim.Optimizer, Any]:
    """Adam, with a cosine decay unless ``lr_schedule`` says constant.

    Constant-lr Adam leaves the shift jittering around the optimum by about lr (the
    minibatch gradients never vanish); a cosine decay lets it settle.
    """
    optimiser = torch.optim.Adam(shift.parameters(), lr=params.lr)
    schedule = None
    if params.lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimiser, T_max=params.max_steps, eta_min=params.lr * MIN_LR_RATIO
        )
    return optimiser, schedule


def _bandwidths(
    encoder: nn.Module,
    eval_t: torch.Tensor,
    eval_s: torch.Tensor,
    params: ShiftFitParams,
    gen: torch.Generator,
) -> list[float]:
    """The kernel bandwidths: multiples of the median distance, before any shift."""
    with torch.no_grad():
        start_emb = encoder(eval_t)
    median = median_bandwidth(
        [eval_s, start_emb],
        subsample=params.median_subsample,
        generator=gen,
        min_bandwidth=params.min_bandwidth,
        max_bandwidth=params.max_bandwidth,
    )
    return multiscale_bandwidths(
        median,
        params.bandwidth_factors,
        min_bandwidth=params.min_bandwidth,
        max_bandwidth=params.max_bandwidth,
    )


class _BestState:
    """The best held-out MMD^2 so far, its weights, the curve, and early stopping."""

    def __init__(self, start: float, shift: nn.Module) -> None:
        self.before = self.best = start
        self.best_step, self.bad, self.stopped = 0, 0, False
        self.rows: list[dict[str, float]] = [
            {"step": 0, "eval_mmd2": start, "batch_mmd2": float("nan")}
        ]
        self.state = _copy(shift)

    def update(
        self, step: int, current: float, batch: float, shift: nn.Module, params: ShiftFitParams
    ) -> bool:
        """Record an evaluation; ``True`` when ``patience`` evaluations brought no gain."""
        self.rows.append({"step": step, "eval_mmd2": current, "batch_mmd2": batch})
        if current < self.best - params.min_delta:
            self.best, self.best_step, self.bad = current, step, 0
            self.state = _copy(shift)
            return False
        self.bad += 1
        if self.bad >= params.patience:
            self.stopped = step < params.max_steps
            return True
        return False


def _copy(shift: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in shift.state_dict().items()}
