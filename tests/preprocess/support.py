"""Fixtures of the preprocess tests: column configs, a knockdown screen with a known answer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.params import ColumnsParams, KnockdownParams
from tests.support import PAPALEXI_COLUMNS, PERTURBENCH_COLUMNS  # noqa: F401 (re-exported)

KD_COLUMNS = ColumnsParams(
    pert_col="pert",
    celltype_col="celltype",
    batch_col=None,
    control_label="ctrl",
    dataset_col=None,
    dataset_name="ds",
)
PAPALEXI_MEASURED = [
    "STAT1", "STAT2", "STAT3", "JAK2", "IFNGR2", "CMTM6", "NFKBIA", "TNFRSF14", "UBE2L6",
]  # fmt: skip


def knockdown_params(**overrides: object) -> KnockdownParams:
    """cell-load's defaults (0.30 / 0.50 / 30), filter enabled, targets from the label."""
    values = dict(
        enabled=True,
        target_col=None,
        type_col=None,
        knockdown_types=[],
        residual_expression=0.30,
        cell_residual_expression=0.50,
        min_cells=30,
    )
    values.update(overrides)
    return KnockdownParams(**values)


# Linear normalised expression planted per group: (context, label, n_cells, {gene: value}).
# Controls hold 10 of every target gene in context k1 and 40 of gene A in context k2;
# every other gene is 5. Context k3 has no control cells.
KD_GROUPS = [
    ("k1", "ctrl", 100, {"A": 10, "B": 10, "C": 10}),
    ("k2", "ctrl", 100, {"A": 40, "B": 10, "C": 10}),
    # strong knockdown: mean 0.24 of control, 40 cells pass the cell filter (10 do not)
    ("k1", "A", 40, {"A": 1}),
    ("k1", "A", 10, {"A": 8}),
    # weak knockdown: 0.60 of control -> dropped
    ("k1", "B", 50, {"B": 6}),
    # mean 0.275 passes, but only 25 cells are below 0.50 -> too few cells (25 < 30)
    ("k1", "C", 25, {"C": 0}),
    ("k1", "C", 25, {"C": 5.5}),
    # target not measured -> kept
    ("k1", "ZZZ", 40, {}),
    # combination, both measured: every cell needs A and B below 0.50
    ("k1", "A+B", 40, {"A": 1, "B": 1}),
    ("k1", "A+B", 10, {"A": 1, "B": 8}),
    # combination with one weak component -> dropped, reason names C
    ("k1", "A+C", 40, {"A": 1, "C": 7}),
    # combination with an unmeasured component: checked on A only -> kept
    ("k1", "A+ZZZ", 40, {"A": 1}),
    # target never expressed in controls -> dropped
    ("k1", "Z0", 40, {}),
    # per-context control mean: 10 / 40 = 0.25 in k2 (0.40 against the global mean 25)
    ("k2", "A", 40, {"A": 10}),
    # no control in k3: the global control mean (25) is used: 2 / 25 = 0.08
    ("k3", "A", 40, {"A": 2}),
]
KD_GENES = ["A", "B", "C", "Z0", "g0", "g1", "g2", "g3"]


def make_knockdown_screen(*, sparse: bool) -> ad.AnnData:
    """log1p screen built from :data:`KD_GROUPS` (no noise: every answer is exact)."""
    blocks, perts, contexts = [], [], []
    for context, label, n, planted in KD_GROUPS:
        level = {g: 5.0 for g in KD_GENES}
        level.update({g: 10.0 for g in ("A", "B", "C")})
        level["Z0"] = 0.0
        level.update(planted)
        blocks.append(np.tile([level[g] for g in KD_GENES], (n, 1)))
        perts += [label] * n
        contexts += [context] * n
    X = np.log1p(np.vstack(blocks)).astype(np.float32)
    obs = pd.DataFrame(
        {"pert": pd.Categorical(perts), "celltype": contexts},
        index=[f"c{i}" for i in range(len(perts))],
    )
    adata = ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=obs)
    adata.var_names = KD_GENES
    return adata


@pytest.fixture(params=["dense", "csr"])
def kd_screen(request: pytest.FixtureRequest) -> ad.AnnData:
    """The planted knockdown screen, dense and CSR."""
    return make_knockdown_screen(sparse=request.param == "csr")


def snapshot(adata: ad.AnnData) -> dict:
    """Everything a preprocessing function must leave untouched."""
    X = adata.X
    return {
        "X": X.toarray().copy() if sp.issparse(X) else np.array(X, copy=True),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": sorted(adata.uns.keys()),
        "layers": sorted(adata.layers.keys()),
        "obsm": sorted(adata.obsm.keys()),
        "shape": adata.shape,
    }


def assert_unchanged(adata: ad.AnnData, before: dict) -> None:
    """Fail when ``adata`` differs from its :func:`snapshot`."""
    after = snapshot(adata)
    assert after["shape"] == before["shape"]
    np.testing.assert_array_equal(after["X"], before["X"])
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    pd.testing.assert_frame_equal(after["var"], before["var"])
    for key in ("uns", "layers", "obsm"):
        assert after[key] == before[key], key
