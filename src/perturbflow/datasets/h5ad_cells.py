"""The cells of an h5ad file (``obs`` and ``var``) without its matrices: a Kedro dataset.

anndata's backed mode (``read_h5ad(backed="r")``) keeps ``X`` on disk but reads every
``obsm`` entry and every layer into RAM: on a 1M-cell screen with a dense ``X_hvg`` and a
``counts`` layer that is 8 GB and more for a step that only wants ``obs``. The splits,
pairing, training, finetuning, tune and evaluation nodes read the design from ``obs`` and the
expression by rows (:class:`~perturbflow.loading.h5reader.H5RowReader`), so they load an
:class:`H5adCells`: the file's path, ``obs``, ``var``, and what matrices it holds, read with
anndata's own element reader from those groups only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import h5py
import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError
from kedro_datasets._typing import TablePreview

from perturbflow.datasets.anndata_dataset import AnnDataDataset
from perturbflow.loading.h5ad_metadata import describe_h5ad


@dataclass(frozen=True)
class H5adCells:
    """``obs`` and ``var`` of an h5ad file, and where its matrices are.

    The attribute names are AnnData's (``obs``, ``var``, ``obs_names``, ``var_names``,
    ``filename``, ``isbacked``, ``n_obs``, ``n_vars``), so code written for a backed AnnData
    that reads only those works unchanged.

    Attributes:
        filename: The h5ad file.
        obs: Its ``obs``, in file row order.
        var: Its ``var``.
        obsm_keys: Keys of ``obsm``.
        layers_keys: Keys of ``layers``.
    """

    filename: Path
    obs: pd.DataFrame
    var: pd.DataFrame
    obsm_keys: list[str]
    layers_keys: list[str]

    isbacked = True

    @property
    def obs_names(self) -> pd.Index:
        """Cell names."""
        return self.obs.index

    @property
    def var_names(self) -> pd.Index:
        """Gene names of ``X``."""
        return self.var.index

    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        """Number of genes of ``X``."""
        return len(self.var)


def read_h5ad_cells(path: str | os.PathLike[str]) -> H5adCells:
    """Read ``obs`` and ``var`` of an h5ad file, and list its matrices, reading nothing else.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Not an h5ad file.
    """
    layout = describe_h5ad(path)  # checks the file and the obs/var groups
    with h5py.File(path, "r") as f:
        obs = ad.io.read_elem(f["obs"])
        var = ad.io.read_elem(f["var"])
    return H5adCells(
        filename=Path(path),
        obs=obs,
        var=var,
        obsm_keys=layout["obsm_keys"],
        layers_keys=layout["layers_keys"],
    )


class H5adCellsDataset(AbstractDataset[Any, H5adCells]):
    """Loads :class:`H5adCells` of a local h5ad file (read-only).

    Example catalog entry (the same file as an ``AnnDataDataset``, transcoded)::

        preprocessed_adata@cells:
          type: perturbflow.datasets.H5adCellsDataset
          filepath: data/02_intermediate/preprocessed.h5ad
    """

    def __init__(
        self, *, filepath: str | os.PathLike[str], metadata: dict[str, Any] | None = None
    ) -> None:
        """Point at one local ``.h5ad`` file.

        Args:
            filepath: Path of the file.
            metadata: Arbitrary metadata, ignored by Kedro (read by kedro-viz).
        """
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def load(self) -> H5adCells:
        """Read ``obs`` and ``var`` of the file.

        Raises:
            DatasetError: The file is missing or is not an h5ad file.
        """
        path = Path(str(self._filepath))
        try:
            return read_h5ad_cells(path)
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"Could not read the cells of '{path}': {exc}") from exc

    def preview(self, nrows: int = 5) -> TablePreview:
        """The first ``obs`` rows and the file's layout, for kedro-viz (as ``AnnDataDataset``)."""
        return AnnDataDataset(filepath=str(self._filepath)).preview(nrows)

    def save(self, data: Any) -> None:
        """Refused: this dataset reads; save the file through an ``AnnDataDataset``."""
        raise DatasetError(
            f"H5adCellsDataset '{self._filepath}' is read-only: save the AnnData through the "
            "AnnDataDataset entry of the same file."
        )

    def _exists(self) -> bool:
        return Path(str(self._filepath)).is_file()
