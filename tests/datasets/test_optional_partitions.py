"""The predictions folder shared by training and finetuning: each replaces only its own."""

from __future__ import annotations

import pytest
from kedro.io.core import DatasetError

from perturbflow.datasets import OptionalPartitionedDataset


def _folder(path, **kwargs) -> OptionalPartitionedDataset:
    return OptionalPartitionedDataset(
        path=str(path), dataset="json.JSONDataset", filename_suffix=".json", **kwargs
    )


def test_empty_folder_loads_as_empty(tmp_path):
    assert _folder(tmp_path / "none").load() == {}


def test_save_replaces_only_partitions_of_the_same_name(tmp_path):
    training = _folder(tmp_path, replace_same_name=True)
    finetuning = _folder(tmp_path, replace_same_name=True)
    training.save({"fewshot/st": {"v": 1}, "zeroshot/st": {"v": 1}})
    finetuning.save({"fewshot/st_lora": {"v": 1}})
    training.save({"fewshot/st": {"v": 2}})  # zeroshot left training.splits
    loaded = {k: f() for k, f in _folder(tmp_path).load().items()}
    assert loaded == {"fewshot/st": {"v": 2}, "fewshot/st_lora": {"v": 1}}


def test_overwrite_and_replace_same_name_conflict(tmp_path):
    with pytest.raises(DatasetError, match="not both"):
        _folder(tmp_path, overwrite=True, replace_same_name=True)
