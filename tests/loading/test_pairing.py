"""Control pairing strategies: invariants on the real screens and a known-answer design."""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.exceptions import InputError
from perturbflow.loading.control_inputs import control_means, pair_sentences
from perturbflow.loading.pairing import (
    PAIRING_STRATEGIES,
    PairingStrategy,
    get_pairing_strategy,
)
from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.pairing_strategies import Pairing
from perturbflow.params import ColumnsParams
from tests.support import PAPALEXI_COLUMNS, PERTURBENCH_COLUMNS

BATCHED = dataclasses.replace(PERTURBENCH_COLUMNS, batch_col="batch")


def _pair(design: PairingDesign, name: str, seed: int = 0, rows=None, **kwargs) -> Pairing:
    rows = np.flatnonzero(~design.is_control) if rows is None else rows
    return get_pairing_strategy(name, **kwargs).pair(design, rows, np.random.default_rng(seed))


def _labels(design: PairingDesign, field: str, rows: np.ndarray) -> np.ndarray:
    return np.asarray(getattr(design, f"{field}_labels"))[getattr(design, field)[rows]]


def _batched_obs(adata: ad.AnnData) -> pd.DataFrame:
    """PerturBench obs with a synthetic batch: quartiles of ``ngenes``."""
    obs = adata.obs.copy()
    obs["batch"] = pd.qcut(obs["ngenes"], 4, labels=["q0", "q1", "q2", "q3"]).astype(str)
    return obs


# --- a tiny design with a known answer ------------------------------------------------
# context A: rows 0 (ctrl, b0), 1 (pert, b0), 2 (ctrl, b1), 3 (pert, b1), 4 (pert, b2)
# context B: rows 5 (ctrl, b0), 6 (pert, b1)
TINY_OBS = pd.DataFrame(
    {
        "pert": ["ctrl", "p", "ctrl", "p", "q", "ctrl", "p"],
        "ct": ["A", "A", "A", "A", "A", "B", "B"],
        "rep": ["b0", "b0", "b1", "b1", "b2", "b0", "b1"],
    },
    index=[f"c{i}" for i in range(7)],
)
TINY_COLUMNS = ColumnsParams(
    pert_col="pert",
    celltype_col="ct",
    batch_col="rep",
    control_label="ctrl",
    dataset_col=None,
    dataset_name="d",
)
TINY_PERT = np.array([1, 3, 4, 6])


@pytest.fixture
def tiny() -> PairingDesign:
    return PairingDesign.from_obs(TINY_OBS, TINY_COLUMNS)


def test_tiny_design_codes(tiny):
    assert tiny.context_labels == ["d.A", "d.B"]
    assert tiny.batch_labels == ["b0", "b1", "b2"]
    assert tiny.is_control.tolist() == [True, False, True, False, False, True, False]
    assert tiny.context.tolist() == [0, 0, 0, 0, 0, 1, 1]


def test_tiny_batch_known_answer(tiny):
    pairing = _pair(tiny, "batch", rows=TINY_PERT)
    rows = pairing.control_rows
    assert rows[[0, 1, 3]].tolist() == [0, 2, 5]  # same batch and context
    assert rows[2] in (0, 2)  # b2 has no control in A: any control of A
    assert pairing.fallback.tolist() == [False, False, True, True]
    assert pairing.stats["n_fallbacks"] == {"context": 2}
    assert pairing.stats["n_by_level"] == {"batch_context": 2, "context": 2}
    assert pairing.stats["groups_without_control"] == ["d.A|b2", "d.B|b1"]
    assert pairing.stats["controls_per_group"] == {"d.A|b0": 1, "d.A|b1": 1, "d.B|b0": 1}


def test_tiny_random_draw_is_uniform_within_context(tiny):
    rows = np.repeat(TINY_PERT, 5000)
    pairing = _pair(tiny, "random", rows=rows)
    in_a = pairing.control_rows[rows != 6]
    assert set(np.unique(in_a)) == {0, 2}
    assert abs((in_a == 0).mean() - 0.5) < 0.02
    assert (pairing.control_rows[rows == 6] == 5).all()
    assert not pairing.fallback.any()


def test_tiny_control_mean_known_answer(tiny):
    pairing = _pair(tiny, "control_mean", rows=TINY_PERT, per="batch")
    # batch-within-context groups (sorted by context, then batch), then the contexts
    assert pairing.mean_groups == [("d.A", "b0"), ("d.A", "b1"), ("d.B", "b0"), ("d.A",), ("d.B",)]
    assert pairing.mean_group.tolist() == [0, 1, 3, 4]
    assert (pairing.control_rows == -1).all()
    assert pairing.fallback.tolist() == [False, False, True, True]
    X = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    means = control_means(lambda r: X[r], tiny, "batch", chunk_rows=2)
    expected = np.stack([X[0], X[2], X[5], (X[0] + X[2]) / 2, X[5]])
    np.testing.assert_allclose(means, expected)
    assert means.dtype == np.float32


# --- PerturBench (real) ---------------------------------------------------------------


def test_random_pairs_a_control_of_the_same_context(perturbench):
    design = PairingDesign.from_obs(perturbench.obs, PERTURBENCH_COLUMNS)
    pert = np.flatnonzero(~design.is_control)
    pairing = _pair(design, "random")
    assert design.is_control[pairing.control_rows].all()
    np.testing.assert_array_equal(design.context[pairing.control_rows], design.context[pert])
    cell_type = perturbench.obs["cell_type"].to_numpy()
    assert (cell_type[pairing.control_rows] == cell_type[pert]).all()
    assert pairing.stats["n_pairs"] == len(pert) and not pairing.fallback.any()
    assert pairing.stats["controls_per_group"] == dict.fromkeys(design.context_labels, 100)
    # every control of a context gets used: the draw covers the pool
    assert len(np.unique(pairing.control_rows)) > 350


def test_pairing_is_reproducible_and_seed_dependent(perturbench):
    design = PairingDesign.from_obs(perturbench.obs, PERTURBENCH_COLUMNS)
    a, b, c = (_pair(design, "random", seed=s).control_rows for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.9


def test_celltype_pairs_across_datasets(perturbench):
    obs = perturbench.obs.copy()
    # split K562 into two datasets; only the first one keeps controls
    k562 = np.flatnonzero(obs["cell_type"].to_numpy() == "k562")
    dataset = obs["dataset"].astype(str).to_numpy()
    dataset[k562[1::2]] = "norman19b"
    obs["dataset"] = dataset
    obs = obs[~((obs["dataset"] == "norman19b") & (obs["condition"] == "control"))]
    design = PairingDesign.from_obs(obs, PERTURBENCH_COLUMNS)
    with pytest.raises(InputError, match=r"contexts with no control.*norman19b\.k562"):
        _pair(design, "random")
    pairing = _pair(design, "celltype")
    pert = np.flatnonzero(~design.is_control)
    assert design.is_control[pairing.control_rows].all()
    np.testing.assert_array_equal(design.celltype[pairing.control_rows], design.celltype[pert])
    crossed = _labels(design, "context", pert) == "norman19b.k562"
    assert (_labels(design, "context", pairing.control_rows[crossed]) == "norman19.k562").all()


def test_batch_pairs_within_batch_and_counts_fallbacks(perturbench):
    obs = _batched_obs(perturbench)
    # construct a batch without control: the A172 controls of q3 move to q0
    moved = (obs["cell_type"] == "A172") & (obs["condition"] == "control") & (obs["batch"] == "q3")
    assert moved.sum() > 0
    obs.loc[moved, "batch"] = "q0"
    design = PairingDesign.from_obs(obs, BATCHED, get_pairing_strategy("batch"))
    pert = np.flatnonzero(~design.is_control)
    pairing = _pair(design, "batch")
    ctrl = pairing.control_rows
    assert design.is_control[ctrl].all()
    np.testing.assert_array_equal(design.context[ctrl], design.context[pert])
    same_batch = design.batch[ctrl] == design.batch[pert]
    assert same_batch[~pairing.fallback].all()
    # expected fallbacks, independently: (context, batch) pairs that have no control
    key = pd.Series(_labels(design, "context", np.arange(len(obs)))) + "|" + obs["batch"].to_numpy()
    with_control = set(key[design.is_control])
    expected = ~key.iloc[pert].isin(with_control).to_numpy()
    np.testing.assert_array_equal(pairing.fallback, expected)
    assert pairing.stats["n_fallbacks"] == {"context": int(expected.sum())}
    assert pairing.stats["groups_without_control"] == sorted(set(key.iloc[pert]) - with_control)
    assert "mcfaline23.A172|q3" in pairing.stats["groups_without_control"]


def test_batch_celltype_pairs_within_batch_and_celltype(perturbench):
    design = PairingDesign.from_obs(_batched_obs(perturbench), BATCHED)
    pert = np.flatnonzero(~design.is_control)
    pairing = _pair(design, "batch_celltype")
    ctrl = pairing.control_rows
    assert design.is_control[ctrl].all()
    np.testing.assert_array_equal(design.celltype[ctrl], design.celltype[pert])
    same_batch = design.batch[ctrl] == design.batch[pert]
    assert same_batch[~pairing.fallback].all()
    assert pairing.stats["n_fallbacks"]["celltype"] == int(pairing.fallback.sum())


@pytest.mark.parametrize("per", ["context", "global"])
def test_control_mean_equals_true_means(perturbench, per):
    design = PairingDesign.from_obs(perturbench.obs, PERTURBENCH_COLUMNS)
    X = perturbench.X
    pairing = _pair(design, "control_mean", per=per)
    means = control_means(lambda rows: X[rows], design, per, chunk_rows=37)
    assert means.shape == (len(pairing.mean_groups), X.shape[1])
    pert = np.flatnonzero(~design.is_control)
    for g, label in enumerate(pairing.mean_groups):
        members = design.is_control.copy()
        if per == "context":
            members &= design.context == design.context_labels.index(label[0])
        np.testing.assert_allclose(means[g], np.asarray(X[members].mean(0)).ravel(), rtol=1e-6)
    if per == "context":
        names = [pairing.mean_groups[g][0] for g in pairing.mean_group]
        assert (np.array(names) == _labels(design, "context", pert)).all()


# --- Papalexi (real batches: bio_rep) -------------------------------------------------


def test_papalexi_batch_pairing_stays_in_replicate(papalexi):
    design = PairingDesign.from_obs(papalexi.obs, PAPALEXI_COLUMNS, "batch")
    pert = np.flatnonzero(~design.is_control)
    pairing = _pair(design, "batch")
    assert design.is_control[pairing.control_rows].all()
    np.testing.assert_array_equal(design.batch[pairing.control_rows], design.batch[pert])
    assert pairing.stats["n_fallbacks"] == {"context": 0}
    obs = papalexi.obs
    per_rep = obs.loc[obs["perturbation"] == "non-targeting", "bio_rep"].value_counts()
    expected = {f"papalexi.THP-1|{rep}": int(n) for rep, n in sorted(per_rep.items())}
    assert pairing.stats["controls_per_group"] == expected


def test_papalexi_replicate_without_control_falls_back(papalexi):
    obs = papalexi.obs
    keep = ~((obs["perturbation"] == "non-targeting") & (obs["bio_rep"] == "rep_3")).to_numpy()
    sub = papalexi[keep]
    design = PairingDesign.from_obs(sub.obs, PAPALEXI_COLUMNS)
    pert = np.flatnonzero(~design.is_control)
    rep3 = _labels(design, "batch", pert) == "rep_3"
    pairing = _pair(design, "batch")
    np.testing.assert_array_equal(pairing.fallback, rep3)
    assert pairing.stats["n_fallbacks"] == {"context": int(rep3.sum())}
    assert pairing.stats["groups_without_control"] == ["papalexi.THP-1|rep_3"]
    assert design.is_control[pairing.control_rows].all()
    # control means per replicate; rep_3 cells get the context mean
    means = control_means(lambda rows: sub.X[rows], design, "batch", chunk_rows=500)
    mean_pairing = _pair(design, "control_mean", per="batch")
    assert mean_pairing.mean_groups[-1] == ("papalexi.THP-1",)
    assert set(mean_pairing.mean_group[rep3]) == {len(mean_pairing.mean_groups) - 1}
    X, ctrl = sub.X, design.is_control
    for g, label in enumerate(mean_pairing.mean_groups):
        members = ctrl.copy()
        if len(label) == 2:
            members &= sub.obs["bio_rep"].to_numpy() == label[1]
        np.testing.assert_allclose(means[g], np.asarray(X[members].mean(0)).ravel(), rtol=1e-5)


# --- sentences ------------------------------------------------------------------------


def test_every_sentence_gets_a_control_sentence_of_the_same_shape(perturbench):
    design = PairingDesign.from_obs(perturbench.obs, PERTURBENCH_COLUMNS)
    rng = np.random.default_rng(0)
    pert = np.flatnonzero(~design.is_control)
    # sentences of 16 cells, each within one context
    sentences = [
        rng.choice(pert[design.context[pert] == c], 16) for c in range(4) for _ in range(5)
    ]
    out = pair_sentences(design, sentences, "random", np.random.default_rng(1))
    assert out.shape == (20, 16)
    stacked = np.stack(sentences)
    np.testing.assert_array_equal(design.context[out], design.context[stacked])
    assert design.is_control[out].all()
    again = pair_sentences(design, stacked, "random", np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)
    means = pair_sentences(design, stacked, get_pairing_strategy("control_mean"), rng)
    assert means.shape == (20, 16) and (means == design.context[stacked]).all()
    with pytest.raises(InputError, match="differ in length"):
        pair_sentences(design, [sentences[0], sentences[1][:3]], "random", rng)


# --- errors ---------------------------------------------------------------------------


def test_unknown_strategy_suggests_a_close_name():
    with pytest.raises(InputError, match=r"choose one of .*Did you mean 'random'"):
        get_pairing_strategy("randon")
    with pytest.raises(InputError, match=r"per='bach'.*Did you mean 'batch'"):
        get_pairing_strategy("control_mean", per="bach")
    with pytest.raises(InputError, match="takes no options"):
        get_pairing_strategy("random", per="batch")


def test_batch_strategy_without_batch_column(perturbench):
    with pytest.raises(InputError, match=r"columns\.batch_col is null.*batch_celltype"):
        PairingDesign.from_obs(perturbench.obs, PERTURBENCH_COLUMNS, get_pairing_strategy("batch"))
    design = PairingDesign.from_obs(perturbench.obs, PERTURBENCH_COLUMNS)
    for name, kwargs in [("batch", {}), ("batch_celltype", {}), ("control_mean", {"per": "batch"})]:
        with pytest.raises(InputError, match=r"columns\.batch_col"):
            _pair(design, name, **kwargs)


def test_missing_batch_column_lists_available(perturbench):
    columns = dataclasses.replace(PERTURBENCH_COLUMNS, batch_col="gem_grup")
    with pytest.raises(InputError, match=r"'gem_grup' \(columns\.batch_col\) is missing.*ngenes"):
        PairingDesign.from_obs(perturbench.obs, columns)


def test_context_without_controls_is_an_error(perturbench):
    obs = perturbench.obs
    obs = obs[~((obs["cell_type"] == "T98G") & (obs["condition"] == "control"))]
    design = PairingDesign.from_obs(obs, PERTURBENCH_COLUMNS)
    for name in ("random", "control_mean"):
        with pytest.raises(InputError, match=r"no control cell.*\['mcfaline23\.T98G'\]"):
            _pair(design, name)
    # pairing only cells of contexts with controls is fine
    t98g = design.context == design.context_labels.index("mcfaline23.T98G")
    ok = np.flatnonzero(~design.is_control & ~t98g)
    assert design.is_control[_pair(design, "random", rows=ok).control_rows].all()


def test_other_input_errors(perturbench):
    bad_label = dataclasses.replace(PERTURBENCH_COLUMNS, control_label="contrl")
    with pytest.raises(InputError, match="Did you mean 'control'"):
        PairingDesign.from_obs(perturbench.obs, bad_label)
    design = PairingDesign.from_obs(perturbench.obs, PERTURBENCH_COLUMNS)
    with pytest.raises(InputError, match="pert_rows"):
        _pair(design, "random", rows=np.array([design.n_cells]))


def test_registry_and_protocol():
    assert set(PAIRING_STRATEGIES) == {
        "random",
        "celltype",
        "batch",
        "batch_celltype",
        "control_mean",
    }
    for name in PAIRING_STRATEGIES:
        assert isinstance(get_pairing_strategy(name), PairingStrategy)
