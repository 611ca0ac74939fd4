"""filter_on_target_knockdown on a planted screen (exact answers) and on Papalexi."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from perturbflow.exceptions import InputError
from perturbflow.preprocess import filter_on_target_knockdown, normalize_log1p
from tests.preprocess.support import (
    KD_COLUMNS,
    PAPALEXI_COLUMNS,
    PAPALEXI_MEASURED,
    assert_unchanged,
    knockdown_params,
    snapshot,
)


def _rows(report: pd.DataFrame) -> dict[tuple[str, str], dict]:
    return {(r["context"], r["perturbation"]): r for r in report.to_dict(orient="records")}


def _cells(adata, context: str, label: str) -> int:
    obs = adata.obs
    return int(((obs["celltype"] == context) & (obs["pert"] == label)).sum())


def test_planted_answers(kd_screen):
    before = snapshot(kd_screen)
    out, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params())
    assert_unchanged(kd_screen, before)
    rows = _rows(report)
    assert len(rows) == 10 and not any(p == "ctrl" for _, p in rows)

    strong = rows[("ds.k1", "A")]
    assert strong["kept"] and strong["reason"] == "kept"
    assert strong["residual_expression"] == pytest.approx(0.24, abs=1e-4)
    assert (strong["n_cells_before"], strong["n_cells_after"]) == (50, 40)
    assert _cells(out, "k1", "A") == 40  # the 10 cells at 0.80 of control are gone

    weak = rows[("ds.k1", "B")]
    assert not weak["kept"] and weak["n_cells_after"] == 0
    assert weak["reason"] == "weak knockdown (residual 0.60 >= 0.30)"
    assert _cells(out, "k1", "B") == 0

    few = rows[("ds.k1", "C")]
    assert few["residual_expression"] == pytest.approx(0.275, abs=1e-4)
    assert few["n_cells_passing"] == 25 and few["n_cells_after"] == 0
    assert few["reason"] == "too few cells after cell filter (25 < 30)"

    unmeasured = rows[("ds.k1", "ZZZ")]
    assert unmeasured["kept"] and not unmeasured["measured"]
    assert unmeasured["reason"] == "target not measured"
    assert np.isnan(unmeasured["residual_expression"])
    assert unmeasured["n_cells_after"] == 40

    zero = rows[("ds.k1", "Z0")]
    assert not zero["kept"] and zero["reason"] == "target not expressed in control cells"

    # controls are always kept, in every context
    assert _cells(out, "k1", "ctrl") == 100 and _cells(out, "k2", "ctrl") == 100
    assert out.n_obs == 200 + 40 + 40 + 40 + 40 + 40 + 40  # ctrl, A, ZZZ, A+B, A+ZZZ, k2 A, k3 A


def test_combinations(kd_screen):
    _, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params())
    rows = _rows(report)
    both = rows[("ds.k1", "A+B")]
    assert both["measured_targets"] == "A+B" and both["kept"]
    assert both["residual_expression"] == pytest.approx(0.24, abs=1e-4)  # the worse of A, B
    assert both["residual_by_target"] == "A=0.100, B=0.240"
    assert both["n_cells_after"] == 40  # cells with B at 0.80 fail although A is down

    weak_part = rows[("ds.k1", "A+C")]
    assert not weak_part["kept"]
    assert weak_part["reason"] == "weak knockdown (residual 0.70 >= 0.30 for C)"

    partial = rows[("ds.k1", "A+ZZZ")]
    assert partial["targets"] == "A+ZZZ" and partial["measured_targets"] == "A"
    assert partial["kept"] and partial["n_cells_after"] == 40


def test_control_mean_of_the_same_context(kd_screen):
    _, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params())
    rows = _rows(report)
    # 10 / 40 against k2's controls (0.40 against all controls: would be dropped)
    assert rows[("ds.k2", "A")]["residual_expression"] == pytest.approx(0.25, abs=1e-4)
    assert rows[("ds.k2", "A")]["kept"]
    # k3 has no control: the mean of all control cells (25) is used
    assert rows[("ds.k3", "A")]["residual_expression"] == pytest.approx(0.08, abs=1e-4)
    assert rows[("ds.k3", "A")]["kept"]


def test_min_cells(kd_screen):
    _, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params(min_cells=25))
    few = _rows(report)[("ds.k1", "C")]
    assert few["kept"] and few["n_cells_after"] == 25
    _, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params(min_cells=41))
    assert _rows(report)[("ds.k1", "A")]["reason"] == "too few cells after cell filter (40 < 41)"


def test_log1p_scale_reproduces_cell_load(kd_screen):
    _, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params(), scale="log1p")
    strong = _rows(report)[("ds.k1", "A")]
    expected = (40 * np.log1p(1) + 10 * np.log1p(8)) / 50 / np.log1p(10)
    assert strong["residual_expression"] == pytest.approx(expected, rel=1e-5)
    assert not strong["kept"]  # 0.41 on the log scale: the same cells fail


def test_disabled_reports_but_keeps_everything(kd_screen):
    out, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params(enabled=False))
    assert out.n_obs == kd_screen.n_obs
    assert report["kept"].all() and set(report["reason"]) == {"knockdown filter disabled"}
    assert _rows(report)[("ds.k1", "B")]["residual_expression"] == pytest.approx(0.6, abs=1e-4)


def test_target_col(kd_screen):
    obs = kd_screen.obs
    obs["target"] = obs["pert"].astype(str)
    obs["pert"] = ("sg" + obs["pert"].astype(str)).where(obs["pert"] != "ctrl", "ctrl")
    _, report = filter_on_target_knockdown(
        kd_screen, KD_COLUMNS, knockdown_params(target_col="target")
    )
    rows = _rows(report)
    assert rows[("ds.k1", "sgA")]["targets"] == "A" and rows[("ds.k1", "sgA")]["kept"]
    assert rows[("ds.k1", "sgB")]["reason"] == "weak knockdown (residual 0.60 >= 0.30)"
    assert rows[("ds.k1", "sgA+B")]["measured_targets"] == "A+B"

    obs.loc[obs.index[obs["pert"] == "sgA"][:3], "target"] = "B"
    with pytest.raises(InputError, match="several targets in obs column 'target'"):
        filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params(target_col="target"))


def test_type_col_exempts_activation_perturbations(kd_screen):
    obs = kd_screen.obs
    obs["ptype"] = np.where(obs["pert"].astype(str) == "B", "CRISPRa", "CRISPRi")
    params = knockdown_params(type_col="ptype", knockdown_types=["CRISPRi"])
    out, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, params)
    rows = _rows(report)
    # B is weak as a knockdown but it is an activation: exempt, kept whole
    assert rows[("ds.k1", "B")]["kept"]
    assert rows[("ds.k1", "B")]["reason"] == "not a knockdown (ptype not in ['CRISPRi'])"
    assert _cells(out, "k1", "B") == 50
    # knockdowns are still filtered
    assert not rows[("ds.k1", "A+C")]["kept"] and rows[("ds.k1", "A")]["kept"]
    with pytest.raises(InputError, match=r"'ptyp' \(preprocessing.knockdown.type_col\) is missing"):
        filter_on_target_knockdown(
            kd_screen, KD_COLUMNS, knockdown_params(type_col="ptyp", knockdown_types=["x"])
        )


def test_layer_and_input_errors(kd_screen):
    kd_screen.layers["lognorm"] = kd_screen.X.copy()
    kd_screen.X = np.full(kd_screen.shape, 0.5, dtype=np.float32)  # no knockdown in X
    _, report = filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params())
    assert not _rows(report)[("ds.k1", "A")]["kept"]
    _, report = filter_on_target_knockdown(
        kd_screen, KD_COLUMNS, knockdown_params(), layer="lognorm"
    )
    assert _rows(report)[("ds.k1", "A")]["kept"]
    with pytest.raises(InputError, match="layer 'lognrm' is not in adata.layers.*'lognorm'"):
        filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params(), layer="lognrm")
    with pytest.raises(
        InputError, match=r"'trget' \(preprocessing.knockdown.target_col\) is missing"
    ):
        filter_on_target_knockdown(kd_screen, KD_COLUMNS, knockdown_params(target_col="trget"))
    columns = dataclasses.replace(KD_COLUMNS, control_label="control")
    with pytest.raises(InputError, match="control label 'control' does not occur"):
        filter_on_target_knockdown(kd_screen, columns, knockdown_params())


def test_raw_counts_are_rejected(papalexi):
    with pytest.raises(InputError, match="X holds raw counts; the knockdown filter needs log1p"):
        filter_on_target_knockdown(papalexi, PAPALEXI_COLUMNS, knockdown_params())


def test_real_papalexi(papalexi):
    normalised = normalize_log1p(papalexi, target_sum=None, kind="counts")
    before = snapshot(normalised)
    out, report = filter_on_target_knockdown(normalised, PAPALEXI_COLUMNS, knockdown_params())
    assert_unchanged(normalised, before)
    report = report.set_index("perturbation")
    assert len(report) == 25
    measured = report[report["measured"]]
    assert sorted(measured.index) == sorted(PAPALEXI_MEASURED)
    assert measured["residual_expression"].between(0, 1).all()
    kept = measured[measured["kept"]]
    assert {"STAT1", "JAK2"} <= set(kept.index)  # real knockouts
    assert (kept["n_cells_after"] >= 30).all()
    assert (kept["n_cells_after"] < kept["n_cells_before"]).all()  # cell filter bites
    unmeasured = report[~report["measured"]]
    assert len(unmeasured) == 16 and unmeasured["kept"].all()
    assert set(unmeasured["reason"]) == {"target not measured"}
    assert (unmeasured["n_cells_after"] == unmeasured["n_cells_before"]).all()
    assert (out.obs["perturbation"] == "non-targeting").sum() == 2386
    assert out.n_obs == 2386 + report["n_cells_after"].sum()
