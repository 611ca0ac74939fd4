"""A named split as a training run reads it: its file, ``obs``, split table and cells.

:func:`split_data_from_file` opens the preprocessed h5ad's expression space once, with an
:class:`~perturbflow.loading.h5reader.H5RowReader` (preloaded when it fits the memory
budget, read by rows otherwise), and :func:`shared_reader` hands that reader on to the
training loader, so the matrix is never held twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from perturbflow.exceptions import InputError
from perturbflow.loading.h5ad_metadata import describe_h5ad
from perturbflow.loading.h5reader import H5RowReader
from perturbflow.loading.row_matrix import RowMatrix
from perturbflow.params import LoaderParams
from perturbflow.splits.data import SplitCells, split_design


@dataclass(frozen=True)
class SplitData:
    """The data of one named split, as training reads it.

    Attributes:
        path: The preprocessed h5ad (read lazily by the loader).
        obs: Its ``obs``, in file order.
        split_table: The per-cell split table.
        split_name: Which named split.
        genes: Names of the loader's expression space (``loader.obsm_key``, or ``X``).
        all_genes: ``var_names`` of ``X`` (the ``all`` output space).
        data: Dense expression + labels of the split (perturbation evidence is computed
            from its training cells).
    """

    path: str
    obs: pd.DataFrame
    split_table: pd.DataFrame
    split_name: str
    genes: list[str]
    all_genes: list[str]
    data: SplitCells


def split_data(
    adata_path: str,
    obs: pd.DataFrame,
    split_table: pd.DataFrame,
    split_name: str,
    *,
    genes: list[str],
    all_genes: list[str],
    matrix: Any,
    obsm_key: str | None,
) -> SplitData:
    """Assemble :class:`SplitData`.

    ``matrix`` is the loader's space: dense or sparse in memory, or an
    :class:`~perturbflow.loading.h5reader.H5RowReader` of the file (read by rows).
    """
    data = split_design(obs.index, split_table, split_name, genes=genes, matrix=matrix)
    return SplitData(adata_path, obs, split_table, split_name, genes, all_genes, data)


def split_data_from_file(
    adata: Any,
    split_table: pd.DataFrame,
    split_name: str,
    *,
    genes: list[str],
    loader: LoaderParams,
) -> SplitData:
    """:class:`SplitData` of a preprocessed h5ad file, its matrix read by rows from disk.

    Only ``obs`` comes from ``adata``; the loader's expression space is opened with an
    :class:`~perturbflow.loading.h5reader.H5RowReader`, preloaded when it fits
    ``memory_budget_mib`` (a CSR matrix stays CSR) and read lazily by rows otherwise, so a
    screen larger than RAM is never loaded whole. The training loader reuses that reader.

    Args:
        adata: The preprocessed file's cells: an :class:`~perturbflow.datasets.H5adFile`
            or an AnnData opened with ``backed="r"`` (the path comes from ``filename``).
        split_table: The per-cell split table.
        split_name: Which named split.
        genes: Names of the ``loader.obsm_key`` columns (ignored for ``X``: ``var_names``).
        loader: The loader's expression space (``obsm_key``, ``None`` for ``X``) and its
            preload setting (``preload``, ``memory_budget_mib``).

    Raises:
        InputError: No file behind ``adata``, or ``obsm_key`` is missing.
    """
    if adata.filename is None:
        raise InputError("Training reads the preprocessed h5ad from disk: open it backed.")
    obsm_key = loader.obsm_key
    path = str(adata.filename)
    layout = describe_h5ad(path)
    if obsm_key is not None and obsm_key not in layout["obsm_keys"]:
        raise InputError(
            f"{path}: obsm[{obsm_key!r}] (loader.obsm_key) is missing; it has "
            f"{layout['obsm_keys']}."
        )
    var_names = list(map(str, adata.var_names))
    reader = H5RowReader(
        path,
        key=obsm_key or "X",
        preload=loader.preload,
        memory_budget_mib=loader.memory_budget_mib,
    )
    return split_data(
        path,
        adata.obs,
        split_table,
        split_name,
        genes=list(genes) if obsm_key is not None else var_names,
        all_genes=var_names,
        matrix=reader,
        obsm_key=obsm_key,
    )


def shared_reader(split: SplitData, loader: LoaderParams) -> H5RowReader | None:
    """The split's reader of its file, when it reads the loader's space (else ``None``)."""
    X = split.data.X
    reader = X.reader if isinstance(X, RowMatrix) else None
    if reader is None or reader.key != (loader.obsm_key or "X"):
        return None
    return reader if reader.path == Path(split.path).resolve() else None
