"""The dose-aware perturbation inputs: a slot per drug plus a log-dose block."""

from __future__ import annotations

import json

import numpy as np
import pytest

from perturbflow.exceptions import InputError
from perturbflow.models.components.dose import check_interpolation, fit_dose_encoding
from perturbflow.models.components.inputs import PerturbationInputs
from perturbflow.models.inference.predict import check_known
from perturbflow.splits.effects import training_effects
from tests.drugs.support import CONTEXT, input_params
from tests.models.support import make_split, write_screen
from tests.synthetic import make_screen, split_table


def _fit(screen: dict, dose: str, **changes) -> PerturbationInputs:
    data = screen["split"].data
    return PerturbationInputs.fit(
        data, training_effects(data), input_params(dose, **changes), control_label="DMSO"
    )


def _encode(inputs: PerturbationInputs, screen: dict, labels: list[str]):
    return inputs.encode([(CONTEXT, p) for p in labels], screen["split"].data)


def test_log_mode_gives_one_slot_per_drug_and_places_an_unseen_dose_between(drug_screen):
    inputs = _fit(drug_screen, "log")
    assert inputs.vocabulary == ["drugA", "drugB", "drugC"]
    assert inputs.dose.mode == "log" and inputs.dim == 3 + 3 + 1
    enc = _encode(inputs, drug_screen, ["drugA@0.1uM", "drugA@1uM", "drugA@10uM", "drugA@10nM"])
    v = enc.vectors
    assert (v[:, 0] == 1).all() and (v[:, 1:3] == 0).all()  # drugA's slot, every dose
    x = v[:, 3]  # drugA's dose coordinate
    assert x[0] < x[1] < x[2]  # 1 uM (never trained) lies between 0.1 and 10 uM
    assert x[3] == pytest.approx(np.log(2) / np.log1p(100 / 0.01))  # 10 nM = 0.01 uM, the ref
    assert (v[:, -1] == 1).all() and (v[:, 4:6] == 0).all()
    assert enc.sources == ["identity+dose"] * 4 and enc.unknown_components == [[]] * 4
    check_known(enc, allow_unknown=False)  # an unseen dose of a trained drug is known
    mask = enc.identity_mask
    assert mask[:6].all() and not mask[-1]  # identity dropout hides the dose block too


def test_combinations_sum_and_the_control_is_zero(drug_screen):
    inputs = _fit(drug_screen, "log")
    labels = ["drugA@1uM", "drugB@10uM", "drugA@1uM+drugB@10uM", "drugA@1uM+DMSO", "DMSO"]
    v = _encode(inputs, drug_screen, labels).vectors
    np.testing.assert_allclose(v[2, :-1], v[0, :-1] + v[1, :-1])
    assert v[2, -1] == 1
    np.testing.assert_array_equal(v[3], v[0])
    assert not v[4].any()


def test_none_mode_cannot_tell_doses_apart_and_label_mode_is_per_label(drug_screen):
    none = _fit(drug_screen, "none")
    assert none.vocabulary == ["drugA", "drugB", "drugC"] and none.dim == 4
    v = _encode(none, drug_screen, ["drugA@0.1uM", "drugA@1uM", "drugA@100uM"]).vectors
    assert (v == v[0]).all()
    label = _fit(drug_screen, "label")
    assert "drugA@0.1uM" in label.vocabulary and "drugA@1uM" not in label.vocabulary
    enc = _encode(label, drug_screen, ["drugA@1uM"])
    assert enc.unknown_components == [["drugA@1uM"]]
    with pytest.raises(InputError, match="unknown to the model"):
        check_known(enc, allow_unknown=False)


def test_auto_reads_doses_only_when_they_vary(drug_screen, tmp_path):
    assert _fit(drug_screen, "auto").dose.mode == "log"
    adata = make_screen({("A", "p0"): np.ones(6)}, n_genes=6, contexts=["A"])
    path = write_screen(adata, tmp_path / "plain.h5ad")
    split = make_split(adata, path, split_table(adata, {"s": {}}), "s")
    data = split.data
    plain = PerturbationInputs.fit(
        data, training_effects(data), input_params("auto"), control_label="ctrl"
    )
    assert plain.dose.mode == "label" and plain.vocabulary == ["p0"] and plain.dim == 2
    assert (
        fit_dose_encoding(["ctrl", "a@1uM"], control_label="ctrl", mode="auto", identity=True).mode
        == "label"
    )


def test_saved_inputs_reload_identically_and_old_runs_read_as_label_mode(drug_screen, tmp_path):
    inputs = _fit(drug_screen, "log")
    labels = ["drugA@1uM", "drugC@3uM+drugB@0.1uM", "DMSO"]
    inputs.save(tmp_path)
    meta = json.loads((tmp_path / "perturbation_inputs.json").read_text())
    assert meta["dose"]["mode"] == "log" and meta["dose"]["references"] == {"uM": 0.01}
    again = PerturbationInputs.load(tmp_path)
    np.testing.assert_array_equal(
        _encode(again, drug_screen, labels).vectors, _encode(inputs, drug_screen, labels).vectors
    )
    del meta["dose"]  # as written before doses were read
    (tmp_path / "perturbation_inputs.json").write_text(json.dumps(meta))
    old = PerturbationInputs.load(tmp_path)
    assert old.dose.mode == "label"


def test_bad_doses_and_settings_fail_with_the_reason(drug_screen):
    inputs = _fit(drug_screen, "log")
    with pytest.raises(InputError, match="needs one"):
        _encode(inputs, drug_screen, ["drugA"])
    with pytest.raises(InputError, match="unit 'mg/kg' was never trained"):
        _encode(inputs, drug_screen, ["drugA@1mg/kg"])
    with pytest.raises(InputError, match="switch identity on"):
        _fit(drug_screen, "log", identity=False, evidence=True)
    with pytest.raises(ValueError, match="'auto', 'log', 'none' or 'label'"):
        _fit(drug_screen, "logarithmic")  # the typed params refuse it
    with pytest.raises(InputError, match="must be one of"):
        fit_dose_encoding(
            ["drugA@1uM", "ctrl"], mode="logarithmic", control_label="ctrl", identity=True
        )
    with pytest.raises(InputError, match="needs dose-aware inputs"):
        check_interpolation(0.5, _fit(drug_screen, "none").dose)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        check_interpolation(1.5, inputs.dose)


def test_component_names_follow_the_dose_mode(drug_screen):
    label = "drugA@1uM+drugB@10nM+DMSO"
    assert _fit(drug_screen, "log").component_names(label) == ["drugA", "drugB"]
    assert _fit(drug_screen, "none").component_names(label) == ["drugA", "drugB"]
    assert _fit(drug_screen, "label").component_names(label) == ["drugA@1uM", "drugB@10nM"]
