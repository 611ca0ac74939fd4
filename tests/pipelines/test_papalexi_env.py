"""`kedro run --env papalexi`: the whole default pipeline on the Papalexi 2021 THP-1 screen.

Runs a KedroSession with env ``papalexi`` on a throw-away copy of the project (the
``project_copy`` fixture: conf/, pyproject.toml and data/01_raw/*.h5ad; the working
directory is the copy's root because split TOML paths in the params are relative to it).
The full run takes about 20 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

OUTPUT_ROOT = Path("data/runs/papalexi")
PREDICTORS = [
    "control",
    "perturbation_mean",
    "context_mean",
    "linear",
    "st",
    "perturbflow",
    "ceiling",
]
# a tiny ST model: this test checks the wiring, benchmarks/st_quality.py the quality
TINY_TRAINING = {
    "training": {
        "max_steps": 6,
        "val_every_n_steps": 3,
        "ckpt_every_n_steps": 3,
        "progress_bar": False,
        "model": {"hidden_dim": 32, "n_layers": 1, "n_heads": 2},
    }
}
WEAK_KNOCKDOWNS = {"STAT2", "STAT3", "IFNGR2", "CMTM6", "NFKBIA", "TNFRSF14", "UBE2L6"}
TEST_TARGETS = {"JAK2", "IRF1", "MYC", "SMAD4", "POU2F2"}
VAL_TARGETS = {"STAT1", "BRD4", "CUL3"}


@pytest.mark.slow
def test_papalexi_env_runs_the_default_pipeline(project_copy: Path):
    root = project_copy
    bootstrap_project(root)
    with KedroSession.create(
        project_path=root, env="papalexi", runtime_params=TINY_TRAINING
    ) as session:
        session.run(pipeline_name="__default__")
    reporting = root / OUTPUT_ROOT / "08_reporting"

    # every output lands under data/runs/papalexi; nothing in the default run's folders
    written = {p.relative_to(root / "data") for p in (root / "data").rglob("*") if p.is_file()}
    outside = {p for p in written if p.parts[0] not in ("01_raw", "runs")}
    assert not outside, f"outputs outside {OUTPUT_ROOT}: {sorted(map(str, outside))}"

    # metrics: one row per predictor and the ceiling; base's zeroshot split is switched off
    metrics = pd.read_csv(reporting / "metrics.csv")
    assert set(metrics["split"]) == {"fewshot"}
    fewshot = metrics.drop(columns="split").reset_index(drop=True)
    assert list(fewshot["predictor"]) == PREDICTORS
    assert (fewshot["n_perturbations"] == len(TEST_TARGETS)).all()
    assert fewshot.set_index("predictor")["pearson_delta"].drop("control").notna().all()
    assert (reporting / "metrics.md").read_text().startswith("| split")

    # the split: held-out targets all survived the knockdown filter and have cells
    summary = pd.read_csv(reporting / "split_summary.csv")
    summary = summary[summary["split_name"] == "fewshot"].set_index("split")
    assert summary.loc["test", "n_perturbations"] == len(TEST_TARGETS)
    assert summary.loc["val", "n_perturbations"] == len(VAL_TARGETS)
    assert summary.loc["train", "n_control_cells"] == 2386
    sources = pd.read_csv(reporting / "prediction_sources.csv")
    sources = sources[sources["split"] == "fewshot"]
    assert set(sources["perturbation"]) == TEST_TARGETS
    linear = sources[sources["predictor"] == "linear"].set_index("perturbation")["source"]
    # JAK2 is measured, but no training target is (the filter kept only STAT1 and JAK2,
    # both held out): a signature's sign cannot be learned, so linear falls back honestly
    assert (linear == "fallback:perturbation_mean").all()
    selection = json.loads((reporting / "linear_baseline_selection.json").read_text())
    assert "target_signature" in selection["fewshot"]["sources_unused_for_lack_of_training_support"]

    # preprocessing: raw counts normalised, whole 299-gene panel, weak knockdowns dropped
    report = json.loads((reporting / "preprocessing_report.json").read_text())
    assert report["detected_kind"] == "counts"
    assert report["final_shape"] == [15008, 299]
    assert report["hvg"]["n_selected"] == 299
    dropped = {
        row["perturbation"]: row["reason"] for row in report["perturbations"]["pairs_dropped"]
    }
    assert set(dropped) == WEAK_KNOCKDOWNS
    assert all(reason.startswith("weak knockdown") for reason in dropped.values())
    kept = {row["perturbation"] for row in report["knockdown"]["table"] if row["kept"]}
    assert TEST_TARGETS | VAL_TARGETS <= kept
