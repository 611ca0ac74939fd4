"""Reading source files (lists, globs), control sets and perturbation lists."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.adaptation import (
    embed,
    read_perturbation_list,
    resolve_files,
    source_embeddings,
)
from perturbflow.exceptions import InputError
from tests.adaptation.support import cells_adata, control_cloud, write


def _sources(run, adapt_run, tmp_path):
    """Two source files: controls of A and B, each with some perturbed cells."""
    adata = adapt_run["adata"]
    files, controls = [], []
    for i, context in enumerate(["A", "B"]):
        ctrl = control_cloud(adata, context, 40 + 10 * i, seed=i)
        pert = control_cloud(adata, context, 15, seed=10 + i) + 1.0
        both = ad.concat(
            [
                cells_adata(ctrl, run.genes, context=context),
                cells_adata(pert, run.genes, context=context, pert="p0"),
            ]
        )
        files.append(write(both, tmp_path / f"src_{context}.h5ad"))
        controls.append(ctrl)
    return files, controls


def test_glob_and_list_give_the_embeddings_of_every_control(run, adapt_run, tmp_path):
    files, controls = _sources(run, adapt_run, tmp_path)
    expected = embed(run.net.basal_encoder, np.vstack(controls), chunk_size=1000)
    by_glob = source_embeddings(
        str(tmp_path / "src_*.h5ad"), run, pert_col="pert", control_label="ctrl", chunk_size=7
    )
    np.testing.assert_allclose(by_glob.embeddings, expected, rtol=1e-5, atol=1e-6)
    assert [f["n_controls"] for f in by_glob.files] == [40, 50]
    by_list = source_embeddings([str(f) for f in files], run, pert_col="pert", control_label="ctrl")
    np.testing.assert_allclose(by_list.embeddings, expected, rtol=1e-5, atol=1e-6)
    only_b = source_embeddings(
        files[1],
        run,
        pert_col="pert",
        control_label="ctrl",
        celltype_col="celltype",
        celltypes=["B"],
        max_cells_per_file=30,
    )
    assert len(only_b.embeddings) == 30
    assert only_b.files == [{"file": str(files[1]), "n_controls": 30}]


def test_path_errors_name_the_pattern_or_file(tmp_path):
    with pytest.raises(InputError, match=r"pattern '.*nothing_\*\.h5ad' matches no file"):
        resolve_files(str(tmp_path / "nothing_*.h5ad"))
    with pytest.raises(InputError, match="brace expansion"):
        resolve_files(str(tmp_path / "{a,b}.h5ad"))
    with pytest.raises(InputError, match="missing.h5ad' does not exist"):
        resolve_files([str(tmp_path / "missing.h5ad")])
    with pytest.raises(InputError, match="No source file"):
        resolve_files([])


def test_file_without_controls_is_a_clear_error(run, adapt_run, tmp_path):
    files, _ = _sources(run, adapt_run, tmp_path)
    pert = cells_adata(
        control_cloud(adapt_run["adata"], "C", 10, seed=3), run.genes, context="C", pert="p1"
    )
    bad = write(pert, tmp_path / "no_controls.h5ad")
    with pytest.raises(InputError, match=r"no_controls\.h5ad: no pert == 'ctrl'.*empty"):
        source_embeddings([*files, bad], run, pert_col="pert", control_label="ctrl")
    with pytest.raises(InputError, match=r"celltype \['Z'\].*celltype has 'A'"):
        source_embeddings(
            files,
            run,
            pert_col="pert",
            control_label="ctrl",
            celltype_col="celltype",
            celltypes=["Z"],
        )


def test_counts_and_missing_genes_are_refused(run, adapt_run, tmp_path):
    rng = np.random.default_rng(0)
    counts = cells_adata(rng.poisson(30, (20, len(run.genes))), run.genes, context="A")
    path = write(counts, tmp_path / "counts.h5ad")
    with pytest.raises(InputError, match="raw counts"):
        source_embeddings(path, run, pert_col="pert", control_label="ctrl")
    few = cells_adata(control_cloud(adapt_run["adata"], "A", 10, 0), run.genes, context="A")
    path = write(few[:, 2:].copy(), tmp_path / "few.h5ad")
    with pytest.raises(InputError, match="2 of the model's 24 genes are missing"):
        source_embeddings(path, run, pert_col="pert", control_label="ctrl")


def test_perturbation_lists(tmp_path, run, adapt_run):
    csv = tmp_path / "perts.csv"
    pd.DataFrame({"target_gene": ["p1", "ctrl", "p0", "p1"]}).to_csv(csv, index=False)
    assert read_perturbation_list(csv, column="target_gene", control_label="ctrl") == ["p1", "p0"]
    with pytest.raises(InputError, match="no column 'gene'"):
        read_perturbation_list(csv, column="gene", control_label="ctrl")
    txt = tmp_path / "perts.txt"
    txt.write_text("p2\n\np3\n")
    assert read_perturbation_list(txt, column="x", control_label="ctrl") == ["p2", "p3"]
    files, _ = _sources(run, adapt_run, tmp_path)
    assert read_perturbation_list(files[0], column="pert", control_label="ctrl") == ["p0"]
    only_ctrl = tmp_path / "only.csv"
    pd.DataFrame({"pert": ["ctrl"]}).to_csv(only_ctrl, index=False)
    with pytest.raises(InputError, match="no perturbation to predict"):
        read_perturbation_list(only_ctrl, column="pert", control_label="ctrl")
