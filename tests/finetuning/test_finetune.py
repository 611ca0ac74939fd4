"""Finetuning with LoRA (peft) and in full: what trains, what is saved, how it reloads."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from perturbflow.exceptions import InputError
from perturbflow.loading.datamodule import PerturbationDataModule
from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    load_finetuned,
    merge_adapter,
)
from perturbflow.models.runs.run_dir import WEIGHTS, load_run
from perturbflow.models.training.finetune import (
    LoraParams,
    build_finetune_module,
    finetune_st,
    restrict_contexts,
)
from tests.finetuning.support import _train_base, finetuning_params
from tests.models.support import loader_params
from tests.synthetic import COLUMNS


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _delta_r(run, data, context: str, pert: str, label: str) -> float:
    pred = predict_cells(run, data, {(context, pert): 64}, seed=0).cells[(context, pert)]
    ctrl = data.X[data.control_rows(context)].mean(axis=0)
    real = data.X[data.perturbation_rows(context, pert, label)].mean(axis=0)
    return float(np.corrcoef(pred.mean(axis=0) - ctrl, real - ctrl)[0, 1])


def _finetune(base_run, ft_split, params, run_dir):
    """``finetune_st`` of the test screen from ``base_run`` (a run folder)."""
    return finetune_st(
        ft_split,
        load_run(base_run),
        columns=COLUMNS,
        loader=loader_params(),
        finetuning=params,
        run_dir=run_dir,
    )


@pytest.fixture(scope="module")
def lora_run(base_run, ft_split, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    base_sha = _sha(base_run / WEIGHTS)
    params = finetuning_params(max_steps=120, val_every_n_steps=40)
    summary = _finetune(base_run, ft_split, params, run_dir)
    return {"run_dir": run_dir, "summary": summary, "params": params, "base_sha": base_sha}


def _module(base_run, ft_split, params):
    split = restrict_contexts(ft_split, params.contexts)
    dm = PerturbationDataModule(
        split.path, split.obs, split.split_table, "ft", COLUMNS, loader_params()
    )
    return build_finetune_module(split, dm, load_run(base_run), params, COLUMNS)


def test_lora_trains_only_adapters_and_new_slots(base_run, ft_split):
    params = finetuning_params()
    module, inputs, _, sources, lora, new, _ = _module(base_run, ft_split, params)
    assert new == ["p4"]  # the one component the base never trained
    assert inputs.vocabulary[-1] == "p4"
    assert sources.set_index("perturbation").loc["p4", "source"] == "identity"
    trainable = [n for n, p in module.net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.endswith(".new.weight") for n in trainable)
    assert any("self_attn.lora_A" in n for n in trainable)  # q/k/v in-projection
    assert any("linear1.lora_A" in n for n in trainable)
    assert any(n.startswith("pert_encoder.0.base.lora_A") for n in trainable)
    assert not any(n.startswith(("output_head", "basal_encoder")) for n in trainable)
    # step 0: the finetuned network predicts exactly what the base predicts
    base = load_run(base_run)
    ctrl = torch.rand(2, 16, base.net.arch.input_dim) + 1.0
    known = torch.from_numpy(base.inputs.encode([("ds.D", "p1")], ft_split.data).vectors)
    extended = torch.from_numpy(inputs.encode([("ds.D", "p1")], ft_split.data).vectors)
    module.net.eval()
    with torch.no_grad():
        expected, _ = base.net(ctrl, known.expand(2, -1))
        got, _ = module.net(ctrl, extended.expand(2, -1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_basal_rank_and_output_head_targets(base_run, ft_split):
    params = finetuning_params(
        lora=dict(targets=["basal_encoder", "output_head"], rank=4, basal_rank=2),
    )
    module, *_ = _module(base_run, ft_split, params)
    shapes = {n: p.shape for n, p in module.net.named_parameters() if p.requires_grad}
    assert shapes["basal_encoder.0.lora_A.default.weight"][0] == 2
    assert shapes["output_head.0.lora_A.default.weight"][0] == 4


def test_unknown_lora_target_fails_listing_valid_ones(base_run, ft_split, tmp_path):
    params = finetuning_params(lora=dict(targets=["attention", "qkv"]))
    with pytest.raises(InputError, match=r"'qkv'.*attention.*mlp.*perturbation_encoder"):
        _finetune(base_run, ft_split, params, tmp_path)
    assert not any(tmp_path.iterdir())  # failed before anything was written


def test_lora_finetune_saves_adapter_only_and_base_unchanged(lora_run, base_run):
    run_dir = lora_run["run_dir"]
    assert _sha(base_run / WEIGHTS) == lora_run["base_sha"]
    assert not (run_dir / WEIGHTS).exists()  # no full copy of the weights
    state = torch.load(run_dir / ADAPTER_WEIGHTS, weights_only=True)
    assert state and all("lora_" in k or k.endswith(".new.weight") for k in state)
    n_saved = sum(v.numel() for v in state.values())
    summary = lora_run["summary"]
    assert n_saved == summary["n_trainable_parameters"] < summary["n_parameters"] / 3
    assert summary["best_val_pearson_delta"] is not None
    assert summary["base_digest"] == load_run(base_run).digest


def test_finetuning_learns_the_new_context(lora_run, base_run, ft_split):
    """D responds opposite to A and B: the base predicts its trained p0 reversed."""
    data = ft_split.data
    tuned = load_finetuned(lora_run["run_dir"])
    before = _delta_r(load_run(base_run), data, "ds.D", "p0", "train")
    after = _delta_r(tuned, data, "ds.D", "p0", "train")
    assert before < -0.5
    assert after > 0.5
    assert _delta_r(tuned, data, "ds.D", "p4", "train") > 0.5  # the new slot trained


def test_adapter_reloads_to_identical_predictions(lora_run, ft_split):
    keys = {("ds.D", "p3"): 40, ("ds.D", "p4"): 40, ("ds.A", "p1"): 20}
    first = predict_cells(load_finetuned(lora_run["run_dir"]), ft_split.data, keys, seed=3)
    again = predict_cells(load_finetuned(lora_run["run_dir"]), ft_split.data, keys, seed=3)
    for key in keys:
        np.testing.assert_array_equal(first.cells[key], again.cells[key])


def test_unmerged_lora_network_in_eval_mode_matches_the_merged_one(lora_run, base_run, ft_split):
    """PyTorch's transformer fast path would silently skip LoRA at inference."""
    params = lora_run["params"]
    module, inputs, *_ = _module(base_run, ft_split, params)
    state = torch.load(lora_run["run_dir"] / ADAPTER_WEIGHTS, weights_only=True)
    module.net.load_state_dict(state, strict=False)
    module.net.eval()
    merged = load_finetuned(lora_run["run_dir"]).net
    ctrl = torch.rand(3, 16, merged.arch.input_dim) + 1.0
    pert = torch.from_numpy(inputs.encode([("ds.D", "p2")], ft_split.data).vectors)
    with torch.no_grad():
        unmerged, _ = module.net(ctrl, pert.expand(3, -1))
        expected, _ = merged(ctrl, pert.expand(3, -1))
    torch.testing.assert_close(unmerged, expected, rtol=1e-4, atol=1e-5)
    assert (unmerged - ctrl).abs().max() > 1e-3  # the adapter does something


def test_merged_standalone_run_predicts_like_the_adapter(lora_run, ft_split, tmp_path):
    out = merge_adapter(lora_run["run_dir"], tmp_path / "merged")
    standalone = load_run(out)
    assert "finetuned" in standalone.config
    keys = {("ds.D", "p3"): 40, ("ds.D", "p4"): 40}
    a = predict_cells(load_finetuned(lora_run["run_dir"]), ft_split.data, keys, seed=1)
    b = predict_cells(standalone, ft_split.data, keys, seed=1)
    for key in keys:
        np.testing.assert_allclose(a.cells[key], b.cells[key], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="not empty"):
        merge_adapter(lora_run["run_dir"], out)


def test_wrong_base_run_is_a_clear_error(lora_run, screen):
    other = _train_base(screen, "other_base", seed=7)
    with pytest.raises(InputError, match=r"finetuned from base run .*base.*other_base"):
        load_finetuned(lora_run["run_dir"], base=other)
    with pytest.raises(InputError, match="not a finetuned run"):
        load_finetuned(other)


def test_rerun_reuses_a_finished_finetuning(lora_run, ft_split, base_run):
    params = lora_run["params"]
    again = _finetune(base_run, ft_split, params, lora_run["run_dir"])
    assert again == lora_run["summary"]


def test_killed_finetuning_resumes_from_last_checkpoint(base_run, ft_split, tmp_path):
    run_dir = tmp_path / "run"
    params = finetuning_params(max_steps=40, val_every_n_steps=20)
    _finetune(base_run, ft_split, params, run_dir)
    # as if killed after the step-20 checkpoint: no adapter, run.json still running
    (run_dir / ADAPTER_WEIGHTS).unlink()
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    (run_dir / "checkpoints" / "step=20.ckpt").rename(run_dir / "checkpoints" / "last.ckpt")
    summary = _finetune(base_run, ft_split, params, run_dir)
    assert summary["resumed_from"].endswith("last.ckpt")
    assert summary["steps"] == 40


def test_full_finetuning_trains_every_weight(base_run, ft_split, tmp_path):
    params = finetuning_params(
        method="full",
        max_steps=30,
        val_every_n_steps=15,
        optimizer=dataclasses.replace(finetuning_params().optimizer, lr=1e-3),
    )
    summary = _finetune(base_run, ft_split, params, tmp_path)
    assert summary["n_trainable_parameters"] == summary["n_parameters"]
    meta = (tmp_path / ADAPTER_CONFIG).read_text()
    assert '"method": "full"' in meta
    tuned = load_finetuned(tmp_path)
    base = load_run(base_run)
    changed = [
        n
        for n, p in tuned.net.state_dict().items()
        if n in base.net.state_dict()
        and p.shape == base.net.state_dict()[n].shape
        and not torch.equal(p, base.net.state_dict()[n])
    ]
    assert any(n.startswith("transformer") for n in changed)
    assert any(n.startswith("output_head") for n in changed)


def test_contexts_must_exist(base_run, ft_split, tmp_path):
    params = finetuning_params(contexts=["ds.Z"])
    with pytest.raises(InputError, match=r"ds\.Z.*ds\.A"):
        _finetune(base_run, ft_split, params, tmp_path)


def test_lora_params_are_typed():
    with pytest.raises(ValueError):
        LoraParams(rank=4, alpha=8.0, dropout=0.0, targets=["mlp"], basal_rank=None, r=2)


def test_cli_infer_reads_a_finetuned_run_like_load_finetuned(lora_run, screen, tmp_path):
    from perturbflow.commands import run_cli
    from perturbflow.models.inference.infer import infer_adata

    obs = screen["adata"].obs
    keep = (obs["celltype"] == "D") & obs["pert"].isin(["ctrl", "p3"])
    data_in = screen["adata"][keep.to_numpy()].copy()
    src, out = tmp_path / "in.h5ad", tmp_path / "pred.h5ad"
    data_in.write_h5ad(src)
    args = ["infer", "--run", str(lora_run["run_dir"]), "--adata", str(src), "--pert-col"]
    args += ["pert", "--control", "ctrl", "--celltype-col", "celltype", "--output", str(out)]
    assert run_cli(args) == 0
    expected, _ = infer_adata(load_finetuned(lora_run["run_dir"]), data_in, COLUMNS, seed=0)
    np.testing.assert_allclose(ad.read_h5ad(out).X, expected.X, rtol=1e-6, atol=1e-6)
    base = str(lora_run["run_dir"].parent.parent)  # not a run: refused with the reason
    assert run_cli(args[:-1] + [str(tmp_path / "x.h5ad"), "--base", base]) == 2
