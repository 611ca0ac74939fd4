"""Parsing perturbation labels: combinations, doses, units, STATE/Tahoe literals."""

from __future__ import annotations

import math

import pytest

from perturbflow.exceptions import InputError
from perturbflow.perturbations import (
    CANONICAL_UNIT,
    COMBINATION_SEP,
    Component,
    components,
    parse_dose,
    parse_perturbation,
)


def test_components_unchanged():
    assert COMBINATION_SEP == "+"
    assert components("KLF1+MAP2K6") == ("KLF1", "MAP2K6")
    assert components(" KLF1 ") == ("KLF1",)
    assert components("A+ +B") == ("A", "B")  # blanks dropped, as linear.py expects
    assert components("A|B", sep="|") == ("A", "B")


def test_plain_names_and_combinations():
    assert parse_perturbation("KLF1") == (Component("KLF1"),)
    assert parse_perturbation(" KLF1 + MAP2K6 ") == (Component("KLF1"), Component("MAP2K6"))
    assert parse_perturbation("A|B", sep="|") == (Component("A"), Component("B"))
    # an underscore without a concentration unit belongs to the name
    assert parse_perturbation("DMSO_TF") == (Component("DMSO_TF"),)
    assert parse_perturbation("HLA_2") == (Component("HLA_2"),)
    assert parse_perturbation("(S)-crizotinib") == (Component("(S)-crizotinib"),)


def test_perturbench_condition_and_dose_columns(perturbench):
    obs = perturbench.obs
    pairs = obs[["condition", "dose"]].drop_duplicates().astype(str).itertuples(index=False)
    n = 0
    for condition, dose in pairs:
        parsed = parse_perturbation(condition, dose=dose)
        assert tuple(c.name for c in parsed) == components(condition)
        assert all(c.dose == 1.0 and c.unit is None for c in parsed)
        n += 1
    assert n == obs["condition"].nunique()
    assert parse_perturbation("KLF1+MAP2K6", dose="1+1") == (
        Component("KLF1", 1.0, None),
        Component("MAP2K6", 1.0, None),
    )


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("drugX_1.0uM", Component("drugX", 1.0, "uM")),
        ("drugX@10nM", Component("drugX", 0.01, "uM")),
        ("drugX @ 10 nM", Component("drugX", 0.01, "uM")),
        ("drugX@10", Component("drugX", 10.0, None)),
        ("drugX@0.5 mg/kg", Component("drugX", 0.5, "mg/kg")),
        ("drug_A_5mM", Component("drug_A", 5000.0, "uM")),
        ("drugX@1e3nM", Component("drugX", 1.0, "uM")),
        ("drugX@.5uM", Component("drugX", 0.5, "uM")),
    ],
)
def test_dose_suffixes(label, expected):
    (got,) = parse_perturbation(label)
    assert got.name == expected.name and got.unit == expected.unit
    assert math.isclose(got.dose, expected.dose, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("unit", "factor"),
    [("pM", 1e-6), ("nM", 1e-3), ("uM", 1.0), ("\u00b5M", 1.0), ("\u03bcM", 1.0), ("mM", 1e3),
     ("M", 1e6)],
)  # fmt: skip
def test_units_are_converted_to_micromolar(unit, factor):
    value, canonical = parse_dose(f"2.5{unit}")
    assert canonical == CANONICAL_UNIT == "uM"
    assert math.isclose(value, 2.5 * factor, rel_tol=1e-12)
    (comp,) = parse_perturbation(f"drug@2.5 {unit}")
    assert math.isclose(comp.dose, 2.5 * factor, rel_tol=1e-12)


def test_combination_of_dosed_drugs_and_dose_column():
    assert parse_perturbation("a@10nM+b_2uM") == (
        Component("a", 0.01, "uM"),
        Component("b", 2.0, "uM"),
    )
    parsed = parse_perturbation("a+b", dose="100nM+1mM")
    assert parsed == (Component("a", 0.1, "uM"), Component("b", 1000.0, "uM"))
    # a dose in both places must agree (after unit conversion)
    assert parse_perturbation("a@100nM", dose="0.1uM") == (Component("a", 0.1, "uM"),)
    with pytest.raises(InputError, match=r"'a@100nM'.*'1uM' in the dose column"):
        parse_perturbation("a@100nM", dose="1uM")


def test_tahoe_literals():
    assert parse_perturbation("[('DMSO_TF', 0.0, 'uM')]") == (Component("DMSO_TF", 0.0, "uM"),)
    assert parse_perturbation("('Drug A', 50, 'nM')") == (Component("Drug A", 0.05, "uM"),)
    combo = parse_perturbation("[('a', 1.0, 'uM'), ('b', 2.0, 'mM')]")
    assert combo == (Component("a", 1.0, "uM"), Component("b", 2000.0, "uM"))
    # '+' inside a literal name is not a separator; a dose column still applies per tuple
    assert parse_perturbation("[('a+b', 1.0, 'uM')]", dose="1uM") == (Component("a+b", 1.0, "uM"),)
    assert parse_perturbation("[('x', 3, None)]") == (Component("x", 3.0, None),)


@pytest.mark.parametrize(
    "template",
    [
        "__import__('pathlib').Path('{p}').touch()",
        "[__import__('pathlib').Path('{p}').touch()]",
        "[(__import__('pathlib').Path('{p}').touch(), 1.0, 'uM')]",
        "(__import__('pathlib').Path('{p}').touch())",
        "[('x', 1.0, 'uM')] + [__import__('pathlib').Path('{p}').touch()]",
        "drug@__import__('pathlib').Path('{p}').touch()",
    ],
)
def test_malicious_literals_are_rejected_not_run(tmp_path, template):
    sentinel = tmp_path / "pwned"
    label = template.format(p=sentinel)
    with pytest.raises(InputError) as err:
        parse_perturbation(label)
    assert "__import__" in str(err.value)  # the message names the label
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("A++B", "empty component"),
        ("+A", "empty component"),
        ("[]", "list of \\(name, dose, unit\\)"),
        ("[('a', 'ten', 'uM')]", "'a', 'ten'"),
        ("[('a', 1.0)]", "\\('a', 1.0\\)"),
        ("[('a', True, 'uM')]", "True"),
        ("[('', 1.0, 'uM')]", "list of"),
        ("[('a', -1.0, 'uM')]", ">= 0"),
        ("[('a', 1.0, 'uM')", "list of"),
        ("x@", "Dose ''"),
        ("x@abc", "'abc'"),
        ("x@-1uM", ">= 0"),
        ("@1uM", "no name"),
        ('a"b', "quote"),
    ],
)
def test_malformed_labels_raise_naming_the_label(label, message):
    with pytest.raises(InputError, match=message) as err:
        parse_perturbation(label)
    assert repr(label) in str(err.value) or "empty" in message


def test_missing_label_and_dose_part_mismatch():
    with pytest.raises(InputError, match="Missing perturbation label"):
        parse_perturbation(float("nan"))
    with pytest.raises(InputError, match="Missing perturbation label"):
        parse_perturbation(None)
    with pytest.raises(InputError, match=r"'1\+1' has 2 part.*'KLF1' has 1 component"):
        parse_perturbation("KLF1", dose="1+1")
    with pytest.raises(InputError, match=r"'1' has 1 part.*'KLF1\+MAP2K6' has 2"):
        parse_perturbation("KLF1+MAP2K6", dose="1")
    with pytest.raises(InputError, match="not a number"):
        parse_perturbation("KLF1", dose="high")
