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
:class:`~perturbflow.io_utils.WrittenH5ad`, which the catalog's
:class:`~perturbflow.datasets.AnnDataDataset` moves into place. The passes themselves are
:mod:`perturbflow.preprocess.stream_passes`; this module chooses when to stream and runs them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np

from perturbflow.design import read_design
from perturbflow.exceptions import InputError
from perturbflow.io_utils import WrittenH5ad
from perturbflow.params import ColumnsParams, PreprocessingParams
from perturbflow.preprocess.h5blocks import kept_obs as kept_cells_obs
from perturbflow.preprocess.h5blocks import merged_uns, write_frames
from perturbflow.preprocess.hvg_moments import hvgs_from_moments
from perturbflow.preprocess.knockdown import knockdown_settings
from perturbflow.preprocess.normalize import normalisation_record
from perturbflow.preprocess.report import build_report
from perturbflow.preprocess.stream_passes import (
    pass_knockdown,
    pass_values,
    validate_input,
    write_hvg,
    write_kept,
)

logger = logging.getLogger(__name__)

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
            summary, block_rows = validate_input(raw["X"], obs, var, columns, params, source)
            kind = summary["kind"]
            library = pass_values(raw["X"], block_rows, kind, source)
            target_sum = params.target_sum
            effective = target_sum or float(np.median(library[library > 0]))
            norm = (kind, effective if kind == "counts" else None)
            keep, kd_table, kd_record = pass_knockdown(
                raw["X"], obs, var, block_rows, norm, columns, params, source
            )
            kept_obs = kept_cells_obs(obs, keep)
            with h5py.File(written.path, "w") as out:
                moments = write_kept(raw["X"], out, keep, block_rows, norm)
                annotated, hvg_cols = hvgs_from_moments(moments, var, params.n_top_genes)
                layout = write_hvg(out, hvg_cols, int(keep.sum()), params.hvg_format)
                normalisation = normalisation_record(kind, effective, target_sum)
                hvg = {"flavor": "seurat", "n_top_genes": params.n_top_genes,
                       "n_selected": len(hvg_cols)}  # fmt: skip
                records = {"normalisation": normalisation, "knockdown": kd_record, "hvg": hvg}
                write_frames(out, kept_obs, annotated, merged_uns(raw, records, kind))
    except BaseException:
        written.discard()
        raise
    hvg_genes = [str(g) for g in var.index[hvg_cols]]
    design = read_design(kept_obs, columns)
    report = build_report(
        source=source,
        summary=summary,
        normalisation=normalisation,
        knockdown=kd_record,
        knockdown_table=kd_table,
        controls=design.loc[design["is_control"], "context"].value_counts().sort_index(),
        control_label=columns.control_label,
        hvg=hvg,
        final_shape=(int(keep.sum()), len(var)),
    )
    logger.info(
        "%s: preprocessed out of core %d x %d -> %d x %d; %d HVGs (X_hvg %s)",
        source, len(obs), len(var), int(keep.sum()), len(var), len(hvg_genes), layout,
    )  # fmt: skip
    return written, hvg_genes, report
