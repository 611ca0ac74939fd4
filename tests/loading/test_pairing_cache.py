"""The pairing cache: content-hash keys, round trip, and never a stale entry."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perturbflow.exceptions import InputError
from perturbflow.loading.pairing import PairingDesign, get_pairing_strategy
from perturbflow.loading.pairing_cache import PairingCache
from perturbflow.loading.pairing_strategies import Pairing
from tests.support import PERTURBENCH_COLUMNS


class CountingStrategy:
    """Wraps a strategy and counts how often it really pairs."""

    def __init__(self, name: str, **kwargs) -> None:
        self.inner = get_pairing_strategy(name, **kwargs)
        self.name, self.params, self.calls = self.inner.name, self.inner.params, 0

    def pair(self, design, pert_rows, rng) -> Pairing:
        self.calls += 1
        return self.inner.pair(design, pert_rows, rng)


@pytest.fixture
def obs(perturbench) -> pd.DataFrame:
    return perturbench.obs.copy()


@pytest.fixture
def design(obs) -> PairingDesign:
    return PairingDesign.from_obs(obs, PERTURBENCH_COLUMNS)


@pytest.fixture
def identity(perturbench_path) -> dict:
    stat = os.stat(perturbench_path)
    return {
        "path": str(perturbench_path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "fingerprint": "abc123",
    }


def _same(a: Pairing, b: Pairing) -> None:
    np.testing.assert_array_equal(a.control_rows, b.control_rows)
    np.testing.assert_array_equal(a.fallback, b.fallback)
    assert (a.mean_group is None) == (b.mean_group is None)
    if a.mean_group is not None:
        np.testing.assert_array_equal(a.mean_group, b.mean_group)
    assert a.mean_groups == b.mean_groups
    assert a.stats == b.stats


@pytest.mark.parametrize(("name", "kwargs"), [("random", {}), ("control_mean", {"per": "context"})])
def test_round_trip_and_rerun_hit(tmp_path, design, identity, caplog, name, kwargs):
    strategy = CountingStrategy(name, **kwargs)
    first = PairingCache(tmp_path).get_or_pair(design, strategy, seed=3, identity=identity)
    assert strategy.calls == 1
    direct = strategy.inner.pair(
        design, np.flatnonzero(~design.is_control), np.random.default_rng(3)
    )
    _same(first, direct)
    # a rerun (a new cache object on the same directory) reuses the entry
    with caplog.at_level(logging.INFO, logger="perturbflow.loading.pairing_cache"):
        again = PairingCache(tmp_path).get_or_pair(design, strategy, seed=3, identity=identity)
    assert strategy.calls == 1
    assert "Pairing cache hit" in caplog.text
    _same(again, first)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npz")
    meta = json.loads((tmp_path / files[0]).read_text())
    assert meta["inputs"]["strategy"] == name and meta["inputs"]["identity"] == identity
    assert meta["stats"]["n_pairs"] == int((~design.is_control).sum())
    with np.load(tmp_path / files[1], allow_pickle=False) as data:
        assert set(data.files) >= {"control_rows", "fallback"}


def _changed_identity(design, obs, identity):
    return design, {**identity, "mtime_ns": identity["mtime_ns"] + 1}, 3, {}


def _changed_obs(design, obs, identity):
    obs = obs.copy()
    cell = np.flatnonzero((obs["condition"] == "control").to_numpy())[0]
    obs.iloc[cell, obs.columns.get_loc("condition")] = obs["condition"].iloc[-1]
    return PairingDesign.from_obs(obs, PERTURBENCH_COLUMNS), identity, 3, {}


def _changed_seed(design, obs, identity):
    return design, identity, 4, {}


def _changed_params(design, obs, identity):
    return design, identity, 3, {"per": "global"}


@pytest.mark.parametrize(
    "change", [_changed_identity, _changed_obs, _changed_seed, _changed_params]
)
def test_a_change_never_reuses_a_stale_entry(tmp_path, design, obs, identity, caplog, change):
    cache = PairingCache(tmp_path)
    base = CountingStrategy("control_mean" if change is _changed_params else "random")
    old_key = cache.key(design, base, seed=3, identity=identity)
    cache.get_or_pair(design, base, seed=3, identity=identity)
    new_design, new_identity, seed, kwargs = change(design, obs, identity)
    strategy = CountingStrategy(base.name, **kwargs) if kwargs else base
    new_key = cache.key(new_design, strategy, seed=seed, identity=new_identity)
    assert new_key != old_key
    calls = strategy.calls
    with caplog.at_level(logging.INFO, logger="perturbflow.loading.pairing_cache"):
        fresh = cache.get_or_pair(new_design, strategy, seed=seed, identity=new_identity)
    assert strategy.calls == calls + 1  # paired again, not loaded
    assert "Pairing cache miss" in caplog.text
    rows = np.flatnonzero(~new_design.is_control)
    _same(fresh, strategy.inner.pair(new_design, rows, np.random.default_rng(seed)))
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_key_depends_on_content_not_on_length(design, obs, identity):
    cache = PairingCache("unused")
    strategy = get_pairing_strategy("random")
    key = cache.key(design, strategy, seed=0, identity=identity)
    assert key == cache.key(
        PairingDesign.from_obs(obs, PERTURBENCH_COLUMNS), strategy, seed=0, identity=identity
    )
    # same length, cell types of two cells swapped: a different key
    swapped = obs.copy()
    ct = swapped["cell_type"].astype(str).to_numpy()
    first_k562, first_other = np.flatnonzero(ct == "k562")[0], np.flatnonzero(ct != "k562")[0]
    ct[[first_k562, first_other]] = ct[[first_other, first_k562]]
    swapped["cell_type"] = ct
    other = PairingDesign.from_obs(swapped, PERTURBENCH_COLUMNS)
    assert other.n_cells == design.n_cells
    assert cache.key(other, strategy, seed=0, identity=identity) != key
    rows = np.flatnonzero(~design.is_control)[:10]
    assert cache.key(design, strategy, seed=0, identity=identity, pert_rows=rows) != key
    assert cache.key(design, strategy, seed=[0], identity=identity) == key  # same stream


def test_unreadable_entry_is_a_miss_and_is_rewritten(tmp_path, design, identity, caplog):
    cache = PairingCache(tmp_path)
    strategy = CountingStrategy("random")
    cache.get_or_pair(design, strategy, seed=0, identity=identity)
    npz: Path = next(tmp_path.glob("*.npz"))
    npz.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="perturbflow.loading.pairing_cache"):
        pairing = cache.get_or_pair(design, strategy, seed=0, identity=identity)
    assert "unreadable" in caplog.text and strategy.calls == 2
    key = cache.key(design, strategy, seed=0, identity=identity)
    _same(cache.load(key), pairing)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_identity_must_be_json(design):
    with pytest.raises(InputError, match="JSON-serialisable"):
        PairingCache("unused").key(
            design, get_pairing_strategy("random"), seed=0, identity={"path": object()}
        )
