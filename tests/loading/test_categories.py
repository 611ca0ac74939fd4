"""Category maps (cell type, batch, perturbation label -> index), saved as JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from perturbflow.exceptions import InputError
from perturbflow.loading.categories import CategoryMap
from perturbflow.loading.encodings import PerturbationEncoder


@pytest.fixture
def pb_obs(perturbench) -> pd.DataFrame:
    return perturbench.obs[["condition", "dose", "cell_type"]].copy()


def test_category_map_round_trip(tmp_path, pb_obs):
    cmap = CategoryMap.fit(pb_obs["cell_type"], name="cell_type")
    assert cmap.categories == ("A172", "T98G", "U87MG", "k562")
    codes = cmap.encode(pb_obs["cell_type"])
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(cmap.decode(codes), pb_obs["cell_type"].astype(str).to_numpy())
    path = tmp_path / "celltype_map.json"
    cmap.to_json(path)
    assert json.loads(path.read_text())["index"] == {"A172": 0, "T98G": 1, "U87MG": 2, "k562": 3}
    loaded = CategoryMap.from_json(path)
    assert loaded.categories == cmap.categories and loaded.name == "cell_type"
    np.testing.assert_array_equal(loaded.encode(pb_obs["cell_type"]), codes)


def test_category_map_unseen_values_and_bad_files(tmp_path):
    cmap = CategoryMap.fit([2, 1, 1, "3"], name="batch")
    assert cmap.categories == ("1", "2", "3")
    np.testing.assert_array_equal(cmap.encode(["1", 2, 3]), [0, 1, 2])
    with pytest.raises(InputError, match=r"2 batch value\(s\) not in the fitted map: '4', 'K562'"):
        cmap.encode(["1", "4", "K562", "4"])
    celltypes = CategoryMap.fit(["k562", "A172"], name="cell_type")
    with pytest.raises(InputError, match="'K562' ~ 'k562'"):
        celltypes.encode(["K562"])
    with pytest.raises(InputError, match="missing batch values"):
        cmap.encode(["1", None])
    with pytest.raises(InputError, match="indices outside 0..2"):
        cmap.decode([0, 3])
    bad = tmp_path / "batch_map.json"
    bad.write_text('{"format": "perturbflow.CategoryMap", "index": {"a": 0, "b": 2}}')
    with pytest.raises(InputError, match="batch_map.json: 'index' must map labels to 0..n-1"):
        CategoryMap.from_json(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="batch_map.json is not valid JSON"):
        CategoryMap.from_json(bad)
    with pytest.raises(InputError, match="is not a PerturbationEncoder"):
        PerturbationEncoder.from_json(_path_of(cmap, tmp_path))


def _path_of(cmap: CategoryMap, tmp_path) -> str:
    path = tmp_path / "map.json"
    cmap.to_json(path)
    return str(path)
