"""Multi-scale RBF MMD: known values, geomloss agreement, bandwidth clamping, errors."""

from __future__ import annotations

import math

import pytest
import torch
from geomloss import SamplesLoss

from perturbflow.adaptation import median_bandwidth, mmd2, multiscale_bandwidths
from perturbflow.exceptions import InputError


def _clouds(shift: float, n: int = 300, d: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = torch.randn(n, d, generator=gen) + shift
    return x, y


def test_mmd_is_near_zero_for_one_law_and_grows_with_the_shift():
    values = [float(mmd2(*_clouds(s), [1.0, 2.0])) for s in (0.0, 0.5, 1.0, 2.0)]
    assert abs(values[0]) < 0.01
    assert values == sorted(values)
    assert values[-1] > 0.3


def test_two_point_value_by_hand():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [3.0]])
    k = lambda d2: math.exp(-d2 / 2.0)  # noqa: E731  (sigma 1)
    kxy = (k(0) + k(9) + k(1) + k(4)) / 4
    assert float(mmd2(x, y, [1.0])) == pytest.approx(k(1) + k(9) - 2 * kxy, rel=1e-6)


def test_biased_estimator_equals_geomloss_gaussian():
    x, y = _clouds(0.7, n=120)
    for sigma in (0.5, 2.0):
        ours = float(mmd2(x, y, [sigma], unbiased=False))
        theirs = float(SamplesLoss("gaussian", blur=sigma, backend="tensorized")(x, y))
        assert ours == pytest.approx(2.0 * theirs, rel=1e-4)  # geomloss carries a 1/2


def test_gradient_is_finite_with_duplicated_points():
    x = torch.zeros(4, 3, requires_grad=True)
    y = torch.ones(4, 3)
    mmd2(x, y, [1.0]).backward()
    assert torch.isfinite(x.grad).all()


def test_median_bandwidth_and_its_clamps():
    x, _ = _clouds(0.0, n=1000, d=2)
    gen = torch.Generator().manual_seed(0)
    sigma = median_bandwidth(
        [x], subsample=1000, generator=gen, min_bandwidth=1e-3, max_bandwidth=1e3
    )
    # |x - y|^2 of two standard normal points in 2D is exponential with mean 4: the
    # median distance is sqrt(4 ln 2) ~ 1.665
    assert sigma == pytest.approx(math.sqrt(4 * math.log(2)), rel=0.05)
    same = torch.ones(10, 2)
    gen = torch.Generator().manual_seed(0)
    assert (
        median_bandwidth([same], subsample=10, generator=gen, min_bandwidth=0.01, max_bandwidth=10)
        == 0.01
    )
    gen = torch.Generator().manual_seed(0)
    assert (
        median_bandwidth(
            [x * 1e4], subsample=50, generator=gen, min_bandwidth=0.01, max_bandwidth=10
        )
        == 10
    )
    assert multiscale_bandwidths(2.0, [0.25, 1.0, 8.0], min_bandwidth=1.0, max_bandwidth=4.0) == [
        1.0,
        2.0,
        4.0,
    ]


def test_errors_name_the_problem():
    x, y = _clouds(0.0, n=5)
    with pytest.raises(InputError, match="at least 2 points"):
        mmd2(x[:1], y, [1.0])
    with pytest.raises(InputError, match="width"):
        mmd2(x, y[:, :2], [1.0])
    gen = torch.Generator()
    with pytest.raises(InputError, match="min_bandwidth"):
        median_bandwidth([x], subsample=5, generator=gen, min_bandwidth=0.0, max_bandwidth=1.0)
    with pytest.raises(InputError, match="factors"):
        multiscale_bandwidths(1.0, [], min_bandwidth=0.1, max_bandwidth=1.0)
