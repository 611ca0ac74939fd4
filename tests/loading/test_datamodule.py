"""The DataModule on the real PerturBench file: sentences, pairing, workers, epochs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from perturbflow.loading.datamodule import PerturbationDataModule
from perturbflow.params import LoaderParams, SplitsParams, SplitSpec
from perturbflow.splits import split_table_from_params
from tests.support import PERTURBENCH_COLUMNS

PARAMS = LoaderParams(
    obsm_key=None,
    cell_set_len=16,
    batch_size=4,
    num_workers=0,
    pin_memory=False,
    persistent_workers=False,
    prefetch_factor=None,
    pairing="random",
    pairing_kwargs={},
    include_control_sentences=False,
    preload=False,
    memory_budget_mib=1024,
    seed=0,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, ad.AnnData, pd.DataFrame]:
    from tests.support import PERTURBENCH_PATH

    adata = ad.read_h5ad(PERTURBENCH_PATH)
    spec = SplitSpec(toml=None, training={}, zeroshot={"mcfaline23.A172": "test"}, fewshot={})
    table = split_table_from_params(
        adata.obs, SplitsParams(splits={"zs": spec}), PERTURBENCH_COLUMNS, project_root=Path(".")
    )
    return PERTURBENCH_PATH, adata, table


def _module(setup, **changes) -> PerturbationDataModule:
    path, adata, table = setup
    params = dataclasses.replace(PARAMS, **changes)
    return PerturbationDataModule(str(path), adata.obs, table, "zs", PERTURBENCH_COLUMNS, params)


def test_batches_pair_each_sentence_with_controls_of_its_context(setup):
    path, adata, _ = setup
    module = _module(setup)
    dense = adata.X.toarray().astype(np.float32)
    is_ctrl = (adata.obs["condition"] == "control").to_numpy()
    context = (
        adata.obs["dataset"].astype(str) + "." + adata.obs["cell_type"].astype(str)
    ).to_numpy()
    loader = module.train_dataloader()
    n_batches = 0
    for batch in loader:
        n_batches += 1
        pert_rows = batch["pert_rows"].numpy()
        assert batch["pert_cell_emb"].shape == (*pert_rows.shape, adata.n_vars)
        assert batch["ctrl_cell_emb"].shape == batch["pert_cell_emb"].shape
        np.testing.assert_allclose(batch["pert_cell_emb"].numpy(), dense[pert_rows], rtol=1e-6)
        assert not is_ctrl[pert_rows].any()
        # each sentence is one (context, perturbation) group, never a held-out cell
        for s in range(len(pert_rows)):
            assert len(set(context[pert_rows[s]])) == 1
            assert "mcfaline23.A172" not in set(context[pert_rows[s]])
    assert n_batches == len(loader)


def test_epochs_are_fresh_and_reproducible(setup):
    a = _module(setup).train_dataloader()
    first = [b["pert_rows"] for b in a]
    again = [b["pert_rows"] for b in _module(setup).train_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    a.batch_sampler.set_epoch(1)
    second = [b["pert_rows"] for b in a]
    assert not all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_two_workers_yield_the_same_batches(setup):
    zero = [b["pert_cell_emb"] for b in _module(setup).train_dataloader()]
    two = [b["pert_cell_emb"] for b in _module(setup, num_workers=2).train_dataloader()]
    assert len(zero) == len(two)
    assert all(torch.equal(x, y) for x, y in zip(zero, two, strict=True))


def test_test_loader_is_deterministic_and_covers_the_heldout_context(setup):
    path, adata, _ = setup
    module = _module(setup)
    rows = [b["pert_rows"] for b in module.test_dataloader()]
    rows_again = [b["pert_rows"] for b in module.test_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(rows, rows_again, strict=True))
    seen = np.unique(torch.cat([r.reshape(-1) for r in rows]).numpy())
    a172 = np.flatnonzero(
        ((adata.obs["cell_type"] == "A172") & (adata.obs["condition"] != "control")).to_numpy()
    )
    np.testing.assert_array_equal(seen, a172)


def test_control_mean_inputs_are_the_context_means(setup):
    path, adata, _ = setup
    module = _module(setup, pairing="control_mean", pairing_kwargs={"per": "context"})
    batch = next(iter(module.train_dataloader()))
    dense = adata.X.toarray()
    ctx = (adata.obs["dataset"].astype(str) + "." + adata.obs["cell_type"].astype(str)).to_numpy()
    row = int(batch["pert_rows"][0, 0])
    ctrl_rows = np.flatnonzero((ctx == ctx[row]) & (adata.obs["condition"] == "control").to_numpy())
    np.testing.assert_allclose(
        batch["ctrl_cell_emb"][0, 0].numpy(), dense[ctrl_rows].mean(axis=0), rtol=1e-5, atol=1e-6
    )


def test_ddp_ranks_take_disjoint_equal_shares_of_the_single_process_epoch(setup):
    whole = _module(setup).train_dataloader().batch_sampler
    whole.set_epoch(3)
    one = [tuple(s[0]) for batch in whole for s in batch]
    shares = []
    for rank in (0, 1):
        sampler = _module(setup).train_dataloader().batch_sampler
        sampler.rank, sampler.world_size = rank, 2
        sampler.set_epoch(3)
        shares.append([tuple(s[0]) for batch in sampler for s in batch])
        assert len(sampler) == -(-(len(one) // 2) // PARAMS.batch_size)
    assert len(shares[0]) == len(shares[1]) == len(one) // 2
    # together the ranks see the single-process epoch (less at most one sentence), once
    assert sorted(shares[0] + shares[1]) == sorted(one[: 2 * (len(one) // 2)])
    assert not set(shares[0]) & set(shares[1])


def test_lightning_sets_the_epoch_through_the_batch_samplers_sampler(setup):
    from lightning.fabric.utilities.data import _set_sampler_epoch

    loader = _module(setup).train_dataloader()
    first = [b["pert_rows"] for b in loader]
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls every epoch
    assert loader.batch_sampler.epoch == 1
    second = [b["pert_rows"] for b in loader]
    assert not torch.equal(first[0], second[0])


def test_more_ranks_than_sentences_is_refused(setup):
    from perturbflow.exceptions import InputError
    from perturbflow.loading.sentence_sampler import SentenceBatchSampler

    sampler = _module(setup).train_dataloader().batch_sampler
    with pytest.raises(InputError, match="cannot be shared by"):
        SentenceBatchSampler(
            sampler.groups,
            sampler.design,
            pairing="random",
            pairing_kwargs={},
            cell_set_len=16,
            batch_size=4,
            shuffle=True,
            seed=0,
            world_size=sampler.n_sentences + 1,
        )
