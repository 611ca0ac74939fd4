"""The ST network's parts: shapes, permutation equivariance, sizes, losses."""

from __future__ import annotations

import pytest
import torch

from perturbflow.models.components.losses import STLoss, pearson_rows, sentence_deltas
from perturbflow.models.components.network import (
    SIZES,
    Architecture,
    SetTransformer,
    StateTransitionNet,
    resolve_size,
)
from tests.models.support import loss_params


def _arch(**overrides) -> Architecture:
    values = dict(
        input_dim=12,
        output_dim=12,
        decoder_dim=0,
        perturbation_dim=5,
        n_batches=0,
        hidden_dim=16,
        n_layers=2,
        n_heads=2,
        dropout=0.0,
        predict_residual=True,
    )
    values.update(overrides)
    return Architecture(**values)


def test_shapes_with_batch_encoder_and_decoder():
    net = StateTransitionNet(_arch(decoder_dim=30, n_batches=3)).eval()
    ctrl, pert = torch.rand(4, 7, 12), torch.rand(4, 5)
    batch = torch.randint(0, 3, (4, 7))
    pred, decoded = net(ctrl, pert, batch, ctrl_all=torch.rand(4, 7, 30))
    assert pred.shape == (4, 7, 12)
    assert decoded.shape == (4, 7, 30)


def test_untrained_network_predicts_no_effect():
    # zero-initialised output heads: at step 0 the prediction is the control input
    net = StateTransitionNet(_arch()).eval()
    ctrl = torch.rand(3, 6, 12)
    pred, _ = net(ctrl, torch.rand(3, 5))
    assert torch.allclose(pred, ctrl)


def test_permutation_equivariance():
    torch.manual_seed(0)
    net = StateTransitionNet(_arch()).eval()
    for p in net.output_head.parameters():  # leave the zero init: a real function
        torch.nn.init.normal_(p, std=0.3)
    ctrl, pert = torch.rand(2, 9, 12), torch.rand(2, 5)
    perm = torch.randperm(9)
    pred, _ = net(ctrl, pert)
    pred_perm, _ = net(ctrl[:, perm], pert)
    assert torch.allclose(pred[:, perm], pred_perm, atol=1e-5)
    assert not torch.allclose(pred, pred_perm, atol=1e-3)  # the order did matter to rows


def test_set_transformer_mixes_cells():
    torch.manual_seed(0)
    block = SetTransformer(8, 1, 2, 0.0).eval()
    x = torch.rand(1, 5, 8)
    y = x.clone()
    y[0, 4] = torch.rand(8)  # change one cell: the others' outputs change too (attention)
    assert not torch.allclose(block(x)[0, 0], block(y)[0, 0])


def test_sizes_and_overrides():
    assert resolve_size("sm", hidden_dim=None, n_layers=None, n_heads=None) == SIZES["sm"]
    assert resolve_size("cpu", hidden_dim=64, n_layers=1, n_heads=None)["hidden_dim"] == 64
    with pytest.raises(ValueError, match="multiple of n_heads"):
        resolve_size("cpu", hidden_dim=30, n_layers=None, n_heads=4)
    with pytest.raises(ValueError, match="Unknown model size"):
        resolve_size("huge", hidden_dim=None, n_layers=None, n_heads=None)


@pytest.mark.parametrize("name", ["energy", "sinkhorn", "mse"])
def test_set_distance_is_zero_for_identical_sets_and_grows_with_a_shift(name):
    loss = STLoss(loss_params(name=name))
    x = torch.rand(3, 10, 6)
    same = loss.set_distance(x, x.clone()).item()
    shifted = loss.set_distance(x, x + 1.0).item()
    assert abs(same) < 1e-4
    assert shifted > 0.1


def test_energy_distance_ignores_cell_order():
    loss = STLoss(loss_params())
    x, y = torch.rand(2, 12, 5), torch.rand(2, 12, 5)
    perm = torch.randperm(12)
    assert torch.isclose(loss.set_distance(x, y), loss.set_distance(x[:, perm], y))


def test_delta_terms():
    ctrl = torch.zeros(2, 4, 6)
    real = torch.rand(2, 4, 6)
    d_pred, d_real = sentence_deltas(real * 2, real, ctrl)
    assert torch.allclose(pearson_rows(d_pred, d_real), torch.ones(2), atol=1e-5)
    loss = STLoss(loss_params(base_weight=0.0, delta_mse_weight=1.0, delta_pearson_weight=0.5))
    terms = loss(real * 2, real, ctrl)
    assert terms.base.item() == 0.0
    assert terms.delta_pearson.item() == pytest.approx(0.0, abs=1e-5)
    expected = torch.mean((real.mean(1) * 2 - real.mean(1)) ** 2)
    assert terms.delta_mse.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-5)
    anti = loss(-real, real, ctrl)
    assert anti.delta_pearson.item() == pytest.approx(2.0, abs=1e-4)
