"""The per-key row index answers exactly what a scan of every cell's labels answers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from perturbflow.splits.rows import KeyRowIndex


def _scan_controls(cells: pd.DataFrame, context: str) -> np.ndarray:
    return np.flatnonzero(cells["is_control"].to_numpy() & (cells["context"] == context).to_numpy())


def _scan_key(cells: pd.DataFrame, context: str, pert: str, label: str) -> np.ndarray:
    mask = (
        (cells["context"] == context)
        & (cells["perturbation"] == pert)
        & (cells["split"] == label)
        & ~cells["is_control"]
    )
    return np.flatnonzero(mask.to_numpy())


def _random_cells(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pert = rng.choice(["ctrl", "a", "b", "c+d", "e"], n, p=[0.3, 0.2, 0.2, 0.2, 0.1])
    return pd.DataFrame(
        {
            "context": rng.choice(["ds.K562", "ds.A172", "other.K562"], n),
            "perturbation": pert,
            "is_control": pert == "ctrl",
            "split": rng.choice(["train", "val", "test", "unused"], n),
        }
    )


def test_index_matches_a_scan_on_random_labels():
    for seed in range(5):
        cells = _random_cells(seed, 500)
        index = KeyRowIndex.build(
            cells["context"], cells["perturbation"], cells["is_control"], cells["split"]
        )
        assert index.n_cells == 500
        for context in ["ds.K562", "ds.A172", "other.K562", "absent.X"]:
            np.testing.assert_array_equal(
                index.control_rows(context), _scan_controls(cells, context)
            )
            for pert in ["a", "b", "c+d", "e", "ctrl", "absent"]:
                for label in ["train", "val", "test", "unused"]:
                    np.testing.assert_array_equal(
                        index.perturbation_rows(context, pert, label),
                        _scan_key(cells, context, pert, label),
                    )
        for label in ["train", "val", "test"]:
            mask = (cells["split"] == label) & ~cells["is_control"]
            assert index.heldout_contexts(label) == sorted(cells.loc[mask, "context"].unique())
            for context in index.heldout_contexts(label):
                expected = sorted(
                    cells.loc[mask & (cells["context"] == context), "perturbation"].unique()
                )
                assert index.heldout_perturbations(context, label) == expected


def test_every_cell_is_in_exactly_one_group():
    cells = _random_cells(7, 2000)
    index = KeyRowIndex.build(
        cells["context"], cells["perturbation"], cells["is_control"], cells["split"]
    )
    rows = np.concatenate([*index.controls.values(), *index.perturbed.values()])
    np.testing.assert_array_equal(np.sort(rows), np.arange(2000))


def test_the_real_screens_split_is_indexed_like_a_scan(perturbench):
    from perturbflow.params import SplitsParams, SplitSpec
    from perturbflow.splits import split_table_from_params
    from perturbflow.splits.data import split_cells
    from tests.support import PERTURBENCH_COLUMNS

    adata = perturbench
    spec = SplitSpec(toml=None, training={}, zeroshot={"mcfaline23.A172": "test"}, fewshot={})
    table = split_table_from_params(
        adata.obs, SplitsParams(splits={"zs": spec}), PERTURBENCH_COLUMNS, project_root="."
    )
    data = split_cells(adata, table, "zs", genes=list(adata.var_names), obsm_key=None)
    cells = data.cells
    for context in cells["context"].unique():
        np.testing.assert_array_equal(data.control_rows(context), _scan_controls(cells, context))
        for pert in data.heldout_perturbations(context, "test"):
            rows = data.perturbation_rows(context, pert, "test")
            np.testing.assert_array_equal(rows, _scan_key(cells, context, pert, "test"))
            assert len(rows) > 0
    assert data.heldout_contexts("test") == ["mcfaline23.A172"]
