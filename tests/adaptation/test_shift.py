"""The shift shift: a planted shift is recovered, the network stays frozen, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perturbflow.adaptation import GeneShift, embed, fit_shift
from perturbflow.exceptions import InputError
from tests.adaptation.support import control_cloud, fit_params


def _planted(run, adapt_run, seed: int = 0):
    """Source cells and target cells = other cells of the same law minus a planted shift."""
    rng = np.random.default_rng(seed)
    planted = rng.normal(0, 0.3, len(run.genes)).astype(np.float32)
    source = control_cloud(adapt_run["adata"], "C", 800, seed=1)
    target = control_cloud(adapt_run["adata"], "C", 800, seed=2) - planted
    emb = embed(run.net.basal_encoder, source, chunk_size=100)
    return planted, target, emb


def test_fit_recovers_a_planted_shift(run, adapt_run):
    planted, target, emb = _planted(run, adapt_run)
    params = fit_params(max_steps=800, batch_size=256, eval_cells=800, patience=10)
    fit = fit_shift(run.net.basal_encoder, target, emb, params)
    learned = fit.shift.shift.detach().numpy()
    cosine = learned @ planted / (np.linalg.norm(learned) * np.linalg.norm(planted))
    assert cosine > 0.95
    # (measured 0.09: the encoder barely sees a uniform shift of every gene, the slowest
    # direction to converge)
    assert np.linalg.norm(learned - planted) < 0.25 * np.linalg.norm(planted)
    assert fit.mmd_after < 0.02 * fit.mmd_before
    # the curve starts at the unadapted MMD and the kept shift is its minimum
    assert fit.curve["step"].iloc[0] == 0
    assert fit.curve["eval_mmd2"].iloc[0] == pytest.approx(fit.mmd_before)
    assert fit.curve["eval_mmd2"].min() == pytest.approx(fit.mmd_after)


def test_network_is_frozen_and_restored(run, adapt_run):
    _, target, emb = _planted(run, adapt_run)
    before = {k: v.clone() for k, v in run.net.state_dict().items()}
    run.net.train()
    fit_shift(run.net.basal_encoder, target, emb, fit_params(max_steps=20, eval_every=10))
    for name, value in run.net.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    assert all(p.grad is None for p in run.net.parameters())
    assert all(p.requires_grad for p in run.net.parameters())  # flags restored
    assert run.net.training  # mode restored
    run.net.eval()


def test_fit_is_seeded(run, adapt_run):
    _, target, emb = _planted(run, adapt_run)
    params = fit_params(max_steps=40, eval_every=10)
    a = fit_shift(run.net.basal_encoder, target, emb, params)
    b = fit_shift(run.net.basal_encoder, target, emb, params)
    torch.testing.assert_close(a.shift.shift, b.shift.shift)
    np.testing.assert_allclose(a.curve["eval_mmd2"], b.curve["eval_mmd2"])


def test_early_stopping_keeps_the_best_shift(run, adapt_run):
    _, target, emb = _planted(run, adapt_run)
    fit = fit_shift(run.net.basal_encoder, target, emb, fit_params(lr=0.0, patience=2))
    assert fit.stopped_early
    assert fit.steps == 40  # two evaluations (every 20 steps) without improvement
    assert fit.best_step == 0
    assert torch.count_nonzero(fit.shift.shift) == 0


def test_shift_with_scale_fits_and_inverts(run, adapt_run):
    source = control_cloud(adapt_run["adata"], "C", 600, seed=1)
    target = control_cloud(adapt_run["adata"], "C", 600, seed=2) * 0.8 - 0.1
    emb = embed(run.net.basal_encoder, source, chunk_size=256)
    fit = fit_shift(run.net.basal_encoder, target, emb, fit_params(scale=True))
    assert fit.shift.kind == "shift_scale"
    assert fit.mmd_after < 0.2 * fit.mmd_before
    np.testing.assert_allclose(
        fit.shift.inverse_transform(fit.shift.transform(target)), target, atol=1e-5
    )


def test_empty_target_control_set_is_a_clear_error(run, adapt_run):
    _, _, emb = _planted(run, adapt_run)
    empty = np.zeros((0, len(run.genes)), dtype=np.float32)
    with pytest.raises(InputError, match="target control set is empty"):
        fit_shift(run.net.basal_encoder, empty, emb, fit_params())


def test_empty_source_and_mismatched_widths_are_errors(run, adapt_run):
    _, target, emb = _planted(run, adapt_run)
    with pytest.raises(InputError, match="source control set is empty"):
        fit_shift(run.net.basal_encoder, target, emb[:0], fit_params())
    with pytest.raises(InputError, match="basal encoder reads"):
        fit_shift(run.net.basal_encoder, target[:, :5], emb, fit_params())
    with pytest.raises(InputError, match="another model"):
        fit_shift(run.net.basal_encoder, target, emb[:, :5], fit_params())
    with pytest.raises(InputError, match="at least 2 cells"):
        fit_shift(run.net.basal_encoder, target[:1], emb, fit_params())


def test_identity_at_initialisation():
    shift = GeneShift(4, scale=True)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(shift.transform(x), x)
