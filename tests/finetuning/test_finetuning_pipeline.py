"""``kedro run --pipelines finetuning`` on a copy of the project, then the evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import pandas as pd
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

# the scenario's splits (conf/base/splits/*.toml), registered as parameters_splits.yml would
SCENARIO = {
    "splits": {
        "splits": {
            "fewshot": None,
            "zeroshot": None,
            **{
                name: {
                    "toml": f"conf/base/splits/{name}.toml",
                    "training": {},
                    "zeroshot": {},
                    "fewshot": {},
                }
                for name in ("pretrain_k562", "finetune_a172")
            },
        }
    },
    "training": {"splits": ["pretrain_k562"]},
}


def _run(root: Path, pipeline: str, params: dict) -> None:
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env="test", runtime_params=params) as session:
        session.run(pipeline_name=pipeline)


def test_finetuning_then_evaluation_scores_st_lora(project_copy: Path):
    for pipeline in ("preprocessing", "splits", "training", "finetuning", "evaluation"):
        _run(project_copy, pipeline, SCENARIO)
    data = project_copy / "data"
    run_dir = data / "06_models/finetuned/finetune_a172-lora"  # the finetuned_models store
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["steps"] == 8 and run["method"] == "lora"
    assert (run_dir / "adapter.pt").is_file() and not (run_dir / "model.pt").exists()
    assert not (run_dir / "checkpoints").exists()  # those stay in the work folder
    assert (data / "06_models/finetuned_training/finetune_a172-lora/checkpoints").is_dir()
    meta = json.loads((run_dir / "adapter_config.json").read_text())
    assert meta["base"]["path"].endswith("06_models/st/pretrain_k562")  # the st_models store
    assert not any(t.startswith("output_head") for t in meta["target_modules"])
    predictions = data / "07_model_output/model_predictions"
    assert (predictions / "pretrain_k562/st.h5ad").is_file()
    finetuned = data / "07_model_output/finetuned_predictions"
    pred = ad.read_h5ad(finetuned / "finetune_a172/st_lora.h5ad")
    real = ad.read_h5ad(data / "07_model_output/real/finetune_a172.h5ad")
    assert list(pred.var_names) == list(real.var_names)
    assert set(pred.obs["condition"]) == {"control", "MAP4K3", "MAP2K6", "MAP4K5", "PLK4"}
    metrics = pd.read_csv(data / "08_reporting/metrics.csv")
    scored = metrics.query("split == 'finetune_a172'").set_index("predictor")
    assert {"perturbation_mean", "linear", "st_lora"} <= set(scored.index)
    assert scored.loc["st_lora", ["pearson_delta", "mse"]].notna().all()
    sources = pd.read_csv(data / "08_reporting/finetuned_prediction_sources.csv")
    # all four were trained in K562, none in A172: with the default prior_scope
    # informed each is predicted at the prior refitted on the finetuning split (their
    # K562 response mapped to A172: evidence of their own, not the average response)
    assert all(s.startswith("prior linear:") for s in sources["source"]), sources["source"]
    assert (run_dir / "response_prior.json").is_file()
    # the finetuned model is a candidate of the split's validation-chosen predictor
    selection = pd.read_csv(data / "08_reporting/perturbflow_selection.csv")
    own = selection[selection["split"] == "finetune_a172"].set_index("predictor")
    assert own.loc["st_lora", "n_validation"] == 2 and own["chosen"].sum() == 1
    _run(project_copy, "training", SCENARIO)  # a training rerun keeps the finetuned predictions
    assert (finetuned / "finetune_a172/st_lora.h5ad").is_file()
    assert (predictions / "pretrain_k562/st.h5ad").is_file()
