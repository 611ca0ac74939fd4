"""A split set to null in the params is switched off (environments cannot delete keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from perturbflow.exceptions import InputError
from perturbflow.params import SplitsParams, SplitSpec
from perturbflow.splits import split_table_from_params
from tests.support import PERTURBENCH_COLUMNS


def test_null_split_is_dropped(perturbench, project_root: Path):
    spec = SplitSpec(toml=None, training={}, zeroshot={"mcfaline23.A172": "test"}, fewshot={})
    splits = SplitsParams(splits={"zs": spec, "off": None})
    assert list(splits.active()) == ["zs"]
    table = split_table_from_params(
        perturbench.obs, splits, PERTURBENCH_COLUMNS, project_root=project_root
    )
    assert "zs" in table.columns and "off" not in table.columns


def test_every_split_switched_off_fails(perturbench, project_root: Path):
    with pytest.raises(InputError, match="no active split"):
        split_table_from_params(
            perturbench.obs,
            SplitsParams(splits={"off": None}),
            PERTURBENCH_COLUMNS,
            project_root=project_root,
        )
