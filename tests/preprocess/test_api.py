"""preprocess_adata end to end, its report and report_to_frame."""

from __future__ import annotations

import dataclasses
import json

import anndata as ad
import numpy as np
import pytest

from perturbflow.exceptions import InputError
from perturbflow.params import PreprocessingParams
from perturbflow.preprocess import preprocess_adata, report_to_frame
from tests.preprocess.support import (
    KD_COLUMNS,
    PAPALEXI_COLUMNS,
    PAPALEXI_MEASURED,
    PERTURBENCH_COLUMNS,
    assert_unchanged,
    knockdown_params,
    make_knockdown_screen,
    snapshot,
)


def params(**overrides: object) -> PreprocessingParams:
    values = dict(
        expected_input="auto",
        target_sum=None,
        n_top_genes=2000,
        hvg_flavor="seurat",
        knockdown=knockdown_params(),
    )
    values.update(overrides)
    return PreprocessingParams(**values)


def test_papalexi_end_to_end(papalexi, tmp_path):
    before = snapshot(papalexi)
    out, hvg, report = preprocess_adata(
        papalexi, PAPALEXI_COLUMNS, params(n_top_genes=100), source="papalexi.h5ad"
    )
    assert_unchanged(papalexi, before)

    text = json.dumps(report, allow_nan=False)  # plain JSON, no NaN
    assert json.loads(text) == report
    assert report["input_shape"] == [20_729, 299]
    assert report["detected_kind"] == "counts" and report["normalisation"]["normalised"]
    assert report["hvg"]["n_selected"] == len(hvg) == 100
    assert report["final_shape"] == list(out.shape)
    cells = report["cells"]
    assert cells["kept"] + cells["dropped"] == 20_729 and cells["kept"] == out.n_obs
    assert sum(cells["dropped_by_reason"].values()) == cells["dropped"]
    perts = report["perturbations"]
    assert perts["input"] == 25 and perts["kept"] + perts["dropped"] == 25
    assert len(perts["pairs_dropped"]) == perts["dropped"] > 0
    table = {r["perturbation"]: r for r in report["knockdown"]["table"]}
    assert {g for g, r in table.items() if r["measured"]} == set(PAPALEXI_MEASURED)

    np.testing.assert_array_equal(out.obsm["X_hvg"], out[:, hvg].X.toarray())
    assert "counts" in out.layers
    path = tmp_path / "preprocessed.h5ad"
    out.write_h5ad(path)  # uns holds only h5ad-writable values
    assert ad.read_h5ad(path).uns["perturbflow"]["knockdown"]["scale"] == "linear"

    frame = report_to_frame(report)
    assert len(frame) == 26 and frame["is_control"].sum() == 1
    assert frame["n_cells_after"].sum() == out.n_obs
    assert frame.loc[frame["is_control"], "reason"].item() == "control (always kept)"
    stat1 = frame.set_index("perturbation").loc["STAT1"]
    assert stat1["kept"] and stat1["n_cells_dropped"] > 0
    assert stat1["cells_dropped_reason"] == "target residual in the cell >= 0.50"
    dropped = frame[~frame["kept"]]
    assert (dropped["cells_dropped_reason"] == "perturbation dropped").all()


def test_perturbench_crispra_and_disabled_filter(perturbench):
    out, hvg, report = preprocess_adata(perturbench, PERTURBENCH_COLUMNS, params())
    assert report["detected_kind"] == "log1p" and not report["normalisation"]["normalised"]
    assert "counts" not in out.layers
    # CRISPRa raises its target: the knockdown filter drops it and says why
    (dropped,) = report["perturbations"]["pairs_dropped"]
    assert dropped["perturbation"] == "TMSB4X"
    assert dropped["reason"].endswith("; target up-regulated)")
    assert len(report_to_frame(report)) == 4 + len(report["knockdown"]["table"])

    off = params(knockdown=knockdown_params(enabled=False))
    out, _, report = preprocess_adata(perturbench, PERTURBENCH_COLUMNS, off)
    assert out.n_obs == perturbench.n_obs and report["cells"]["dropped"] == 0


def test_errors_come_before_any_work(papalexi):
    with pytest.raises(InputError, match="^papalexi.h5ad: preprocessing.expected_input is 'log1p'"):
        preprocess_adata(
            papalexi, PAPALEXI_COLUMNS, params(expected_input="log1p"), source="papalexi.h5ad"
        )
    bad = params(n_top_genes=0, knockdown=knockdown_params(residual_expression=1.5))
    with pytest.raises(InputError, match="n_top_genes=0 must be at least 1; knockdown.residual"):
        preprocess_adata(papalexi, PAPALEXI_COLUMNS, bad)
    target = params(knockdown=knockdown_params(target_col="genes"))
    with pytest.raises(InputError, match="'genes' .* is missing.*Did you mean 'gene'"):
        preprocess_adata(papalexi, PAPALEXI_COLUMNS, target)
    columns = dataclasses.replace(PAPALEXI_COLUMNS, control_label="NT")
    with pytest.raises(InputError, match="control label 'NT'"):
        preprocess_adata(papalexi, columns, params())


def test_controls_only_screen():
    screen = make_knockdown_screen(sparse=True)
    screen = screen[(screen.obs["pert"] == "ctrl").to_numpy()].copy()
    out, hvg, report = preprocess_adata(screen, KD_COLUMNS, params(n_top_genes=3))
    assert out.n_obs == 200 and report["perturbations"]["input"] == 0
    assert report["cells"]["dropped_by_reason"] == {}
    frame = report_to_frame(report)
    assert list(frame["context"]) == ["ds.k1", "ds.k2"] and frame["is_control"].all()
