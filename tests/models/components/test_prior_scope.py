"""Which keys a run trained without its prior predicts at the prior (``prior_scope``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from perturbflow.models.components.prior import PriorSettings, fit_response_prior
from perturbflow.models.components.prior_scope import (
    NETWORK,
    is_average_response,
    keys_at_prior,
    out_of_context_keys,
)
from perturbflow.splits import split_cells, training_effects
from tests.synthetic import make_screen, split_table

N_GENES = 30
SETTINGS = PriorSettings(folds=4, ranks=(3,), ridge=0.1, seed=0)


@pytest.fixture(scope="module")
def screen():
    """Singles p0..p6 in A and B; combinations p1+p2, p3+p4 and a perturbation q in A only.

    Trained in A: p0..p4 and p3+p4 (p5 is validation). Held out in A: p6 (trained in B: the
    linear prior maps B's response), p1+p2 (its components trained in A: the additive
    prior), q (trained nowhere: the context's average response).
    """
    rng = np.random.default_rng(0)
    singles = {f"p{i}": rng.normal(0, 0.6, N_GENES) for i in range(7)}
    effects = {(c, p): d for c in ("A", "B") for p, d in singles.items() if (c, p) != ("A", "p6")}
    effects[("B", "p6")] = singles["p6"]
    effects[("A", "p6")] = singles["p6"]
    effects[("A", "p1+p2")] = singles["p1"] + singles["p2"]
    effects[("A", "q")] = rng.normal(0, 0.6, N_GENES)
    effects[("A", "p3+p4")] = singles["p3"] + singles["p4"]  # a trained combination
    adata = make_screen(effects, n_genes=N_GENES, contexts=["A", "B"])
    held = {("A", "p6"): "test", ("A", "p1+p2"): "test", ("A", "q"): "test", ("A", "p5"): "val"}
    data = split_cells(adata, split_table(adata, {"s": held}), "s", genes=list(adata.var_names))
    effects = training_effects(data)
    prior = fit_response_prior(
        data, effects, kind="linear", control_label="ctrl", settings=SETTINGS
    )
    return data, effects, prior


KEYS = [
    ("ds.A", "p6"),
    ("ds.A", "p1+p2"),
    ("ds.A", "q"),
    ("ds.A", "p0"),
    ("ds.A", "ctrl"),
    ("ds.A", "p3+p4"),
]


def test_informed_takes_evidence_and_the_additive_model_but_not_the_average(screen):
    data, effects, prior = screen
    _, sources = prior.deltas(KEYS, data)
    assert sources[5] == "linear:components"  # the trained combination has one too
    assert sources[:3] == [
        "linear:other_contexts",
        "linear:components",
        "linear:fallback:perturbation_mean",
    ]
    informed = keys_at_prior(prior, "informed", effects, KEYS, data)
    # p6: nothing in A, a response elsewhere; p1+p2: the additive model of A's singles;
    # q: only the context's average, which the network also predicts from, cell by cell;
    # p3+p4 was trained in A: the network has seen its own cells
    assert informed.anchored == [True, True, False, False, False, False]
    assert informed.sources == [
        "linear:other_contexts",
        "linear:components",
        NETWORK,
        NETWORK,
        NETWORK,
        NETWORK,
    ]
    deltas, _ = prior.deltas(KEYS[:2], data)
    np.testing.assert_array_equal(informed.deltas[:2], deltas)
    assert not informed.deltas[2:].any()
    # out_of_context: every key without a trained component in A, whatever its prior
    outside = keys_at_prior(prior, "out_of_context", effects, KEYS, data)
    assert outside.anchored == [True, False, True, False, False, False]
    assert outside.sources[2] == "linear:fallback:perturbation_mean"


def test_scope_all_and_unknown_scopes_are_refused(screen):
    data, effects, prior = screen
    with pytest.raises(ValueError, match="adds the prior to every key"):
        keys_at_prior(prior, "all", effects, KEYS, data)
    with pytest.raises(ValueError, match="unknown prior scope 'everywhere'"):
        keys_at_prior(prior, "everywhere", effects, KEYS, data)


def test_average_response_sources():
    assert is_average_response("linear:fallback:perturbation_mean")
    assert is_average_response("context_mean")
    assert not is_average_response("context_transfer")
    assert not is_average_response("linear:target_signature")


def test_rules_for_what_the_network_knows(screen):
    _, effects, _ = screen
    effects = dataclasses.replace(effects, keys=[("c", "X+Y"), ("c", "Z"), ("c", "drugA@1uM")])
    keys = [
        ("c", "X"),  # trained only inside X+Y
        ("c", "Z+X"),  # Z trained as a single, X only inside X+Y
        ("c", "Z"),
        ("c", "drugA@10uM"),  # another dose of a trained single
        ("c", "W"),
    ]
    assert out_of_context_keys(effects, keys, "ctrl", rule="any") == [
        False,
        False,
        False,
        False,
        True,
    ]
    assert out_of_context_keys(effects, keys, "ctrl", rule="single") == [
        True,
        False,
        False,
        False,
        True,
    ]
    assert out_of_context_keys(effects, keys, "ctrl", rule="every") == [
        True,
        True,
        False,
        False,
        True,
    ]
    with pytest.raises(ValueError, match="rule must be one of"):
        out_of_context_keys(effects, keys, "ctrl", rule="some")
