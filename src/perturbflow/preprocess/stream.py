"""Out-of-core preprocessing: a screen larger than RAM, streamed by row ranges.

:func:`preprocess_h5ad` does what :func:`~perturbflow.preprocess.preprocess_adata` does
(validate, normalise + log1p, on-target knockdown filter, HVGs into ``obsm['X_hvg']``) on
an h5ad file, holding one block of rows at a time plus per-gene and per-cell vectors:

1. ``obs``/``var`` are read and checked before the matrix is touched; the sampled rows
   tell counts from log1p.
2. Pass 1: NaN/inf/negative values and library sizes (the median target sum).
3. Pass 2: each block is normalised with scanpy (``normalize_total`` with the global
   target sum, ``log1p``: both act row by row, so a block gives the rows the whole matrix
   would) and only its target-gene columns are kept; the knockdown filter runs on that
   cells x targets matrix, the same function as in memory.
4. Pass 3: the kept rows are normalised again and written to the output (``X``, and the
   raw counts in ``layers['counts']``), while the per-gene moments of ``expm1(X)`` that
   scanpy's seurat flavour needs accumulate (:func:`~perturbflow.preprocess.hvg.
   seurat_statistics`).
5. Pass 4: the HVG columns of the written ``X`` become ``obsm['X_hvg']`` (CSR past the
   dense budget of ``hvg_format: auto``).

scanpy and anndata have no streaming path for these steps without dask, which this
project does not depend on: ``sc.pp.highly_variable_genes`` takes the whole matrix (and
makes an ``expm1`` copy of it for seurat), ``filter_on_target_knockdown`` and the writers
need the matrix in RAM. The output is written to a temporary file and returned as a
:class:`WrittenH5ad`, which the catalog's :class:`~perturbflow.datasets.AnnDataDataset`
moves into place.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.params import ColumnsParams, PreprocessingParams
from perturbflow.preprocess._knockdown_utils import targets_per_label
from perturbflow.preprocess.h5blocks import (
    CSRAppender,
    DenseAppender,
    matrix_shape,
    merged_uns,
    read_rows,
    row_ranges,
    value_dtype,
    write_frames,
)
from perturbflow.preprocess.h5blocks import kept_obs as kept_cells_obs
from perturbflow.preprocess.hvg import (
    hvg_is_dense,
)
from perturbflow.preprocess.hvg_moments import GeneMoments, hvgs_from_moments
from perturbflow.preprocess.knockdown import filter_on_target_knockdown, knockdown_settings
from perturbflow.preprocess.normalize import normalisation_record
from perturbflow.preprocess.report import build_report
from perturbflow.preprocess.validation import (
    check_value_counts,
    context_labels,
    design_summary,
    detect_expression_kind,
    sample_rows,
    validate_design,
    value_counts,
)

logger = logging.getLogger(__name__)

#: Stored values per block of rows (~64 MB of float32 + indices at this size).
BLOCK_VALUES = 8_000_000


@dataclass(frozen=True)
class WrittenH5ad:
    """A preprocessed h5ad written out of core, waiting in a temporary folder.

    Saving it through :class:`~perturbflow.datasets.AnnDataDataset` moves the file to the
    dataset's path (and removes the folder); :meth:`discard` removes it otherwise.
    """

    path: Path

    def discard(self) -> None:
        """Delete the temporary file and its folder."""
        shutil.rmtree(self.path.parent, ignore_errors=True)


def _block_rows(n_rows: int, nnz: int, n_cols: int) -> int:
    """Rows per block so that a block holds about :data:`BLOCK_VALUES` stored values."""
    per_row = max(1.0, nnz / max(n_rows, 1)) if nnz else n_cols
    return int(max(256, min(n_rows, BLOCK_VALUES // per_row)))


def _stored_values(node: h5py.Group | h5py.Dataset) -> int:
    return int(node["data"].shape[0]) if isinstance(node, h5py.Group) else int(np.prod(node.shape))


def _normalise(raw: sp.csr_matrix, kind: str, target_sum: float | None) -> sp.csr_matrix:
    """Normalise + log1p one block of raw counts with scanpy (a log1p block is returned)."""
    if kind == "log1p":
        return raw
    block = ad.AnnData(X=raw.copy())  # scanpy normalises in place
    sc.pp.normalize_total(block, target_sum=target_sum)
    sc.pp.log1p(block)
    return sp.csr_matrix(block.X)


def _validate(
    node: h5py.Group | h5py.Dataset,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    columns: ColumnsParams,
    params: PreprocessingParams,
    source: str,
) -> tuple[dict[str, Any], int]:
    """Every check that reads ``obs``, ``var`` and a sample of rows; the block size."""
    validate_design(obs, var.index, columns, source=source)
    n_rows, n_cols = matrix_shape(node, f"{source}: X")
    if n_rows != len(obs) or n_cols != len(var):
        raise InputError(
            f"{source}: X is {n_rows} x {n_cols}, obs/var say {len(obs)} x {len(var)}."
        )
    rows = sample_rows(n_rows)
    sample = sp.vstack([read_rows(node, int(r), int(r) + 1) for r in rows]).tocsr()
    summary = design_summary(
        obs,
        columns,
        n_vars=n_cols,
        detected=detect_expression_kind(sample),
        expected_input=params.expected_input,
        source=source,
    )
    return summary, _block_rows(n_rows, _stored_values(node), n_cols)


def _pass_values(
    node: h5py.Group | h5py.Dataset, block_rows: int, kind: str, source: str
) -> np.ndarray:
    """Pass 1: fail on NaN/inf/negative values; library size of every cell."""
    n_rows = matrix_shape(node, source)[0]
    counts = np.zeros(4, dtype=np.int64)
    library = np.zeros(n_rows)
    for start, stop in row_ranges(n_rows, block_rows):
        block = read_rows(node, start, stop)
        counts += value_counts(block)
        library[start:stop] = np.asarray(block.sum(axis=1)).ravel()
    check_value_counts(tuple(int(c) for c in counts), source=source)
    if kind == "counts":
        n_empty = int((library == 0).sum())
        if n_empty:
            logger.warning(
                "%d cells have no counts; they stay all-zero after normalisation", n_empty
            )
    return library


def _target_columns(
    obs: pd.DataFrame, var_names: pd.Index, columns: ColumnsParams, params: PreprocessingParams,
    source: str,
) -> np.ndarray:  # fmt: skip
    """Columns of every gene that a perturbation label (or ``target_col``) targets."""
    codes, uniques = pd.factorize(obs[columns.pert_col].astype(str))
    labels = [str(u) for u in uniques]
    targets = targets_per_label(obs, labels, codes, params.knockdown.target_col, source)
    genes = sorted({g for t in targets for g in t} & set(map(str, var_names)))
    return pd.Index(var_names).get_indexer(genes).astype(np.int64)


def _pass_knockdown(
    node: h5py.Group | h5py.Dataset,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    block_rows: int,
    norm: tuple[str, float | None],
    columns: ColumnsParams,
    params: PreprocessingParams,
    source: str,
) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Pass 2: the knockdown filter on the cells x target-genes matrix; the kept rows."""
    cols = _target_columns(obs, var.index, columns, params, source)
    n_rows = len(obs)
    blocks = [
        _normalise(read_rows(node, start, stop), *norm)[:, cols]
        for start, stop in row_ranges(n_rows, block_rows)
    ]
    targets = ad.AnnData(
        X=sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, len(cols))),
        obs=obs.set_index(pd.Index(np.arange(n_rows).astype(str))),
        var=pd.DataFrame(index=var.index[cols]),
    )
    filtered, table = filter_on_target_knockdown(targets, columns, params.knockdown, source=source)
    keep = np.zeros(n_rows, dtype=bool)
    keep[filtered.obs_names.astype(np.int64)] = True
    return keep, table, dict(filtered.uns["perturbflow"]["knockdown"])


def _write_kept(
    node: h5py.Group | h5py.Dataset,
    out: h5py.File,
    keep: np.ndarray,
    block_rows: int,
    norm: tuple[str, float | None],
) -> GeneMoments:
    """Pass 3: write the kept rows' ``X`` (and raw counts); accumulate the HVG moments."""
    n_cols = matrix_shape(node, "X")[1]
    dtype = value_dtype(node)  # as in memory: a float matrix keeps its dtype
    x_out = CSRAppender(out, "X", n_cols, dtype)
    counts_out = None
    if norm[0] == "counts":
        counts_out = CSRAppender(out.require_group("layers"), "counts", n_cols, dtype)
    moments = GeneMoments.zeros(n_cols)
    started = last = time.perf_counter()
    for start, stop in row_ranges(len(keep), block_rows):
        rows = np.flatnonzero(keep[start:stop])
        raw = read_rows(node, start, stop)[rows]
        block = _normalise(raw, *norm)
        x_out.append(block)
        moments.add(block)
        if counts_out is not None:
            counts_out.append(raw)
        if time.perf_counter() - last > 10 or stop == len(keep):
            last = time.perf_counter()
            logger.info(
                "Preprocessing: %d/%d rows written (%.0f s)", stop, len(keep), last - started
            )
    x_out.close()
    if counts_out is not None:
        counts_out.close()
    return moments


def _write_hvg(out: h5py.File, columns: np.ndarray, n_cells: int, hvg_format: str) -> str:
    """Pass 4: ``obsm['X_hvg']`` from the written ``X`` (dense or CSR); the format used."""
    dense = hvg_is_dense(n_cells, len(columns), sparse=True, hvg_format=hvg_format)  # X is CSR
    obsm = out.require_group("obsm")
    writer = (
        DenseAppender(obsm, "X_hvg", n_cells, len(columns))
        if dense
        else CSRAppender(obsm, "X_hvg", len(columns))
    )
    x = out["X"]
    block_rows = _block_rows(n_cells, _stored_values(x), x.attrs["shape"][1])
    for start, stop in row_ranges(n_cells, block_rows):
        writer.append(read_rows(x, start, stop)[:, columns])
    writer.close()
    return "dense" if dense else "csr"


#: ``out_of_core: auto`` streams a raw matrix that takes more than this in RAM.
OUT_OF_CORE_ABOVE_BYTES = 1 << 30


def matrix_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes the ``X`` of an h5ad file takes in RAM (values + indices of a CSR matrix)."""
    with h5py.File(path, "r") as f:
        node = f["X"]
        if isinstance(node, h5py.Dataset):
            return int(np.prod(node.shape)) * max(node.dtype.itemsize, 4)
        return int(node["data"].shape[0]) * (4 + node["indices"].dtype.itemsize)


def streams(raw: Any, params: PreprocessingParams) -> bool:
    """Whether ``preprocessing.out_of_core`` streams ``raw`` (an AnnData or file cells).

    Raises:
        InputError: ``always`` for data that has no file behind it.
    """
    in_memory = isinstance(raw, ad.AnnData) and not raw.isbacked
    if params.out_of_core == "never":
        return False
    if in_memory:
        if params.out_of_core == "always":
            raise InputError(
                "preprocessing.out_of_core is 'always' but raw_adata is an AnnData in memory: "
                "make raw_adata a perturbflow.datasets.H5adCellsDataset of the file."
            )
        return False
    if params.out_of_core == "always":
        return True
    size = matrix_bytes(raw.filename)
    if size > OUT_OF_CORE_ABOVE_BYTES:
        logger.info(
            "%s: X takes %.1f GiB in RAM, over the %.0f GiB of out_of_core: auto: streaming it.",
            raw.filename,
            size / 2**30,
            OUT_OF_CORE_ABOVE_BYTES / 2**30,
        )
        return True
    return False


TEMP_PREFIX = "perturbflow-preprocess-"


def _remove_stale_outputs() -> None:
    """Delete the temporary outputs of out-of-core runs whose process is gone (killed).

    A run removes its own folder when it fails with an exception; a killed one cannot, so
    the next run removes every ``perturbflow-preprocess-<pid>-*`` folder whose process no
    longer exists (a run still going in another process is left alone).
    """
    for folder in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        pid = folder.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            logger.info("Removing %s, left by a killed preprocessing run.", folder)
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's process: alive
            continue


def preprocess_h5ad(
    path: str | os.PathLike[str],
    columns: ColumnsParams,
    params: PreprocessingParams,
    *,
    source: str | None = None,
) -> tuple[WrittenH5ad, list[str], dict[str, Any]]:
    """Preprocess an h5ad file out of core (see the module docstring).

    Args:
        path: The raw screen (``X`` dense or CSR, counts or log1p); never modified.
        columns: Where the design lives in ``obs``.
        params: Normalisation, HVG and knockdown settings (``hvg_flavor`` must be
            ``seurat``).
        source: Name of the input in messages (default: the path).

    Returns:
        The written file (move it with the catalog, or ``discard`` it), the ordered HVG
        list and the report of :func:`~perturbflow.preprocess.preprocess_adata`.

    Raises:
        InputError: Bad data or parameters, before the matrix is read past its sample.
    """
    from perturbflow.preprocess.api import check_params

    source = source or str(path)
    check_params(params, source=source)
    if params.hvg_flavor != "seurat":
        raise InputError(
            f"{source}: out-of-core preprocessing selects HVGs with the seurat flavour; "
            f"hvg_flavor is {params.hvg_flavor!r} (set preprocessing.out_of_core: false)."
        )
    _remove_stale_outputs()
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-"))
    written = WrittenH5ad(folder / "preprocessed.h5ad")
    try:
        with h5py.File(path, "r") as raw:
            obs, var = ad.io.read_elem(raw["obs"]), ad.io.read_elem(raw["var"])
            knockdown = knockdown_settings(obs.columns, params.knockdown, source=source)
            params = dataclasses.replace(params, knockdown=knockdown)
            summary, block_rows = _validate(raw["X"], obs, var, columns, params, source)
            kind = summary["kind"]
            library = _pass_values(raw["X"], block_rows, kind, source)
            target_sum = params.target_sum
            effective = target_sum or float(np.median(library[library > 0]))
            norm = (kind, effective if kind == "counts" else None)
            keep, kd_table, kd_record = _pass_knockdown(
                raw["X"], obs, var, block_rows, norm, columns, params, source
            )
            kept_obs = kept_cells_obs(obs, keep)
            with h5py.File(written.path, "w") as out:
                moments = _write_kept(raw["X"], out, keep, block_rows, norm)
                annotated, hvg_cols = hvgs_from_moments(moments, var, params.n_top_genes)
                layout = _write_hvg(out, hvg_cols, int(keep.sum()), params.hvg_format)
                normalisation = normalisation_record(kind, effective, target_sum)
                hvg = {"flavor": "seurat", "n_top_genes": params.n_top_genes,
                       "n_selected": len(hvg_cols)}  # fmt: skip
                records = {"normalisation": normalisation, "knockdown": kd_record, "hvg": hvg}
                write_frames(out, kept_obs, annotated, merged_uns(raw, records, kind))
    except BaseException:
        written.discard()
        raise
    hvg_genes = [str(g) for g in var.index[hvg_cols]]
    is_control = (kept_obs[columns.pert_col].astype(str) == columns.control_label).to_numpy()
    contexts = context_labels(kept_obs, columns)
    report = build_report(
        source=source,
        summary=summary,
        normalisation=normalisation,
        knockdown=kd_record,
        knockdown_table=kd_table,
        controls=pd.Series(contexts[is_control]).value_counts().sort_index(),
        control_label=columns.control_label,
        hvg=hvg,
        final_shape=(int(keep.sum()), len(var)),
    )
    logger.info(
        "%s: preprocessed out of core %d x %d -> %d x %d; %d HVGs (X_hvg %s)",
        source, len(obs), len(var), int(keep.sum()), len(var), len(hvg_genes), layout,
    )  # fmt: skip
    return written, hvg_genes, report
