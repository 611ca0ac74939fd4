"""The linear baseline of Ahlmann-Eltze, Huber and Anders (Nature Methods 2025).

The paper predicts a perturbation's effect as ``b + G W p``: ``G`` a gene embedding (the
top principal components of the training effects), ``p`` a perturbation embedding and
``W`` a small matrix fitted by ridge regression on the training perturbations. The model
is only as honest as ``p``: it must be built from information that does not contain the
held-out perturbation's own response in the held-out context.

This module builds ``p`` by projecting a gene-space *evidence vector* ``v`` onto ``G``
(``p = G^T v``). ``v`` comes from the first of these sources that exists, all of them
computed from training cells (or, for the target signature, the context's control cells,
which are a prediction's inputs anyway):

1. ``components``: a combination ``A+B`` whose components were all trained in the same
   context: the sum of their training deltas (the additive model), centred.
2. ``other_contexts``: the perturbation's mean centred delta in the other training
   contexts where it was seen (zero-shot transfer).
3. ``target_signature``: every target gene is measured: the regression slope of each
   gene on the target gene across the context's control cells (how the transcriptome
   co-varies with the target; a first-order perturbation signature). On PerturBench's
   devel subset only one target (TMSB4X) is measured; on Papalexi nine are.

Each source has its own ``W`` (the sources live on different scales), fitted on the
training perturbations for which that source exists, leaving each one's own cells out.
The two response-space sources (``components``, ``other_contexts``) are already predicted
responses: their ``W`` is shrunk towards the identity, not zero, and with fewer than two
training perturbations it *is* the identity (for ``components``, the additive model of
double perturbations). A ``target_signature`` is not a response:
whether genes move with or against it depends on the perturbation (knockdown or
activation), so its ``W`` is shrunk towards zero, as in the paper, and it is used only
when fitted on at least two training perturbations that have a signature.
A perturbation with no usable source cannot be embedded honestly
and is predicted by ``perturbation_mean`` (reported as ``fallback:perturbation_mean``).
The rank of ``G`` is chosen on validation perturbations only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perturbflow.baselines.simple import FALLBACK, Key, PredictedEffect
from perturbflow.splits.data import SplitCells
from perturbflow.splits.effects import TrainingEffects
from perturbflow.splits.evidence import RESPONSE_SOURCES, SOURCES, Evidence

logger = logging.getLogger(__name__)

_MIN_FIT_COLUMNS = 2


@dataclass(frozen=True)
class LinearModel:
    """A fitted linear baseline: gene basis, per-source maps and context offsets."""

    basis: np.ndarray  # genes x rank
    maps: dict[str, np.ndarray]  # source -> rank x rank
    rank: int
    n_fit_columns: dict[str, int]


def fit_linear(evidence: Evidence, *, rank: int, ridge: float) -> LinearModel:
    """Fit the gene basis and one ridge map per evidence source.

    Args:
        evidence: Evidence vectors of the split.
        rank: Number of principal components of the centred training deltas.
        ridge: Ridge penalty, relative to the mean squared norm of the embeddings.

    Returns:
        The fitted model (sources with fewer than two training columns get the identity).
    """
    Y = evidence.centred
    rank = max(1, min(rank, *Y.shape))
    _, _, vt = np.linalg.svd(Y, full_matrices=False)
    basis = vt[:rank].T
    maps, counts = {}, {}
    for source in SOURCES:
        cols = [(i, evidence.vector(source, k)) for i, k in enumerate(evidence.effects.keys)]
        cols = [(i, v) for i, v in cols if v is not None]
        counts[source] = len(cols)
        is_response = source in RESPONSE_SOURCES
        if len(cols) < _MIN_FIT_COLUMNS:
            if is_response:
                maps[source] = np.eye(rank)  # trust the response evidence as it is
            continue  # without training support a signature's sign and scale are unknown
        Z = basis.T @ Y[[i for i, _ in cols]].T  # rank x n
        E = basis.T @ np.vstack([v for _, v in cols]).T  # rank x n
        gram = E @ E.T
        lam = ridge * max(np.trace(gram) / rank, 1e-12)
        # A response-space source is shrunk towards the identity (where the training
        # columns say nothing, W stays I); a signature towards zero, as in the paper.
        eye = np.eye(rank)
        prior = eye if is_response else np.zeros_like(eye)
        maps[source] = (Z @ E.T + lam * prior) @ np.linalg.inv(gram + lam * eye)
    return LinearModel(basis=basis, maps=maps, rank=rank, n_fit_columns=counts)


def predict_linear_with(
    model: LinearModel, evidence: Evidence, keys: Sequence[Key]
) -> dict[Key, PredictedEffect]:
    """Predict ``keys`` with a fitted model (the first available source wins)."""
    out = {}
    for key in keys:
        base = evidence.effects.mean_delta(key[0])
        for source in SOURCES:
            v = evidence.vector(source, key) if source in model.maps else None
            if v is None:
                continue
            delta = base + model.basis @ (model.maps[source] @ (model.basis.T @ v))
            out[key] = PredictedEffect(delta, source)
            break
        else:
            out[key] = PredictedEffect(base, FALLBACK)
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two deltas over genes (0 when either is constant).

    The validation figure of every choice made on validation perturbations (the linear
    rank here, the ``perturbflow`` predictor in :mod:`perturbflow.evaluation.selection`).
    """
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def real_deltas(data: SplitCells, label: str) -> dict[Key, np.ndarray]:
    """Real held-out deltas: mean of the held-out cells minus all controls of the context."""
    out = {}
    for context in data.heldout_contexts(label):
        ctrl = data.control_mean(context)
        for pert in data.heldout_perturbations(context, label):
            rows = data.perturbation_rows(context, pert, label)
            out[(context, pert)] = data.X[rows].mean(axis=0) - ctrl
    return out


def select_and_fit_linear(
    data: SplitCells,
    effects: TrainingEffects,
    *,
    ranks: Sequence[int],
    ridge: float,
) -> tuple[LinearModel, Evidence, dict]:
    """Choose the rank on validation perturbations and return the fitted model.

    Args:
        data: Expression and labels of the split.
        effects: Training effects of the split.
        ranks: Candidate ranks.
        ridge: Ridge penalty.

    Returns:
        The model fitted with the chosen rank, its evidence and a JSON-serialisable
        selection report (validation pearson_delta per rank, the chosen rank, and how
        many training perturbations each source map was fitted on).
    """
    evidence = Evidence(data, effects)
    val = real_deltas(data, "val")
    scores: dict[int, float] = {}
    for rank in sorted(set(ranks)):
        model = fit_linear(evidence, rank=rank, ridge=ridge)
        if val:
            preds = predict_linear_with(model, evidence, list(val))
            scores[model.rank] = float(np.mean([pearson(preds[k].delta, val[k]) for k in val]))
    if scores:
        chosen = max(scores, key=lambda r: (round(scores[r], 6), -r))
        reason = "best mean validation pearson_delta"
    else:
        chosen = sorted(ranks)[0]
        reason = "no validation perturbations in this split: first candidate rank used"
    model = fit_linear(evidence, rank=chosen, ridge=ridge)
    logger.info(
        "linear baseline, split %s: rank %d (%s); validation pearson_delta by rank %s",
        data.split_name,
        model.rank,
        reason,
        {r: round(s, 4) for r, s in scores.items()},
    )
    report = {
        "split": data.split_name,
        "chosen_rank": model.rank,
        "reason": reason,
        "validation_pearson_delta_by_rank": {str(r): s for r, s in scores.items()},
        "n_validation_perturbations": len(val),
        "ridge": ridge,
        "training_columns_per_source": model.n_fit_columns,
        "sources_with_identity_map": [
            s for s in RESPONSE_SOURCES if model.n_fit_columns[s] < _MIN_FIT_COLUMNS
        ],
        "sources_unused_for_lack_of_training_support": [s for s in SOURCES if s not in model.maps],
    }
    return model, evidence, report
