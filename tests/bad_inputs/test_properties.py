"""Property-based cases (hypothesis) for the value validators and the label parser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from perturbflow.exceptions import InputError
from perturbflow.perturbations import UNIT_TO_UM, components, parse_perturbation
from perturbflow.preprocess.validation import (
    check_value_counts,
    detect_expression_kind,
    value_counts,
)

SETTINGS = settings(max_examples=60, deadline=None)
# values a screen may hold, and the bad ones: NaN, +-inf, negatives
CELLS = st.floats(allow_nan=True, allow_infinity=True, width=32)
MATRICES = arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 9)), elements=CELLS)


@SETTINGS
@given(MATRICES)
def test_value_counts_are_numpys_dense_sparse_and_by_blocks(X):
    nan, inf, neg = int(np.isnan(X).sum()), int(np.isinf(X).sum()), int((X < 0).sum())
    assert value_counts(X)[:3] == (nan, inf, neg)
    assert value_counts(sp.csr_matrix(X))[:3] == (nan, inf, neg)  # zeros are not stored
    halves = [value_counts(X[: len(X) // 2]), value_counts(X[len(X) // 2 :])]
    assert tuple(map(sum, zip(*halves, strict=True)))[:3] == (nan, inf, neg)


@SETTINGS
@given(MATRICES)
def test_the_value_check_fails_exactly_on_bad_values(X):
    counts = value_counts(X)
    bad = counts[0] + counts[1] + counts[2]
    if bad == 0:
        check_value_counts(counts, source="screen.h5ad")
        return
    with pytest.raises(InputError) as err:
        check_value_counts(counts, source="screen.h5ad")
    message = str(err.value)
    assert message.startswith("screen.h5ad: X holds")
    for n, word in zip(counts[:3], ("NaN", "inf", "negative"), strict=True):
        assert (f"{n:,} {word}" in message) == bool(n)


COUNTS = arrays(
    np.int64, st.tuples(st.integers(1, 30), st.integers(2, 12)), elements=st.integers(0, 500)
)


@SETTINGS
@given(COUNTS)
def test_integer_counts_are_never_taken_for_log1p(X):
    kind = detect_expression_kind(X.astype(np.float32))
    assert kind == ("counts" if X.max() > 20 else "other")
    logged = np.log1p(X.astype(np.float64))
    assert detect_expression_kind(logged) == ("log1p" if X.max() > 0 else "other")


NAMES = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-."),
    min_size=1,
    max_size=12,
).filter(lambda s: not s[0].isdigit() and s.strip() == s)


@SETTINGS
@given(st.lists(NAMES, min_size=1, max_size=4))
def test_a_combination_splits_into_its_names(names):
    label = "+".join(names)
    assert components(label) == tuple(names)
    assert [c.name for c in parse_perturbation(label)] == names


@SETTINGS
@given(
    NAMES,
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(sorted(UNIT_TO_UM)),
)
def test_a_dose_is_read_and_converted_to_micromolar(name, value, unit):
    (component,) = parse_perturbation(f"{name}@{value!r}{unit}")
    assert component.name == name and component.unit == "uM"
    assert math.isclose(component.dose, value * UNIT_TO_UM[unit], rel_tol=1e-9, abs_tol=1e-12)


@SETTINGS
@given(st.text(max_size=40))
def test_any_label_parses_or_fails_with_an_input_error(text):
    try:
        parsed = parse_perturbation(text)
    except InputError as err:
        assert repr(text)[:20] in str(err) or "label" in str(err).lower()
        return
    assert parsed and all(c.name for c in parsed)
