"""Finetuning a dose-aware base run: new doses of its drugs are fine, new drugs are refused."""

from __future__ import annotations

import numpy as np
import pytest

from perturbflow.exceptions import InputError
from perturbflow.models.training.finetune_data import extend_inputs
from perturbflow.splits.effects import TrainingEffects
from tests.drugs.test_dose_encoding import _fit


def _effects(base, labels: list[str]) -> TrainingEffects:
    g = len(base.genes)
    return TrainingEffects(
        keys=[("ds.A549", p) for p in labels],
        deltas=np.zeros((len(labels), g)),
        n_cells=np.full(len(labels), 10),
        control_means={"ds.A549": np.zeros(g)},
    )


def test_a_new_dose_of_a_known_drug_needs_no_new_slot(drug_screen):
    base = _fit(drug_screen, "log")
    inputs, new = extend_inputs(base, _effects(base, ["drugA@7uM", "drugB@1uM"]), new_slots=True)
    assert new == [] and inputs.vocabulary == base.vocabulary


def test_a_new_drug_under_a_dosed_base_is_a_clear_error(drug_screen):
    base = _fit(drug_screen, "log")
    with pytest.raises(InputError, match=r"never saw \(drugZ\).*new_identity_slots: false"):
        extend_inputs(base, _effects(base, ["drugZ@1uM", "drugA@1uM"]), new_slots=True)
    inputs, new = extend_inputs(base, _effects(base, ["drugZ@1uM"]), new_slots=False)
    assert new == [] and inputs.vocabulary == base.vocabulary


def test_label_mode_bases_still_get_new_slots(drug_screen):
    base = _fit(drug_screen, "label")
    inputs, new = extend_inputs(base, _effects(base, ["drugZ@1uM"]), new_slots=True)
    assert new == ["drugZ@1uM"] and inputs.vocabulary[-1] == "drugZ@1uM"
