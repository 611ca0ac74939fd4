"""The matrix a key names in an h5ad file (``X``, an ``obsm`` entry or a layer), checked.

:class:`~perturbflow.loading.h5reader.H5RowReader` reads rows of a dense numeric array or a
CSR matrix only: :func:`resolve_matrix` finds the key's node and refuses anything else with
a message that lists the available keys, or, for a CSC matrix, gives the fix.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from perturbflow.exceptions import InputError, suggest

_CSC_FIX = "`adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(path)` (or the layer)"


def resolve_matrix(f: h5py.File, path: Path, key: str) -> h5py.Dataset | h5py.Group:
    """The HDF5 node of ``key``, checked to be a dense numeric or a CSR matrix.

    Args:
        f: The open h5ad file.
        path: Its path, for messages.
        key: ``"X"``, an obsm key (``"X_hvg"`` is ``/obsm/X_hvg``), ``"obsm/<name>"`` or
            ``"layers/<name>"``.

    Raises:
        InputError: A missing key (lists the available ones and suggests a close one), or
            an encoding other than a 2-D numeric array or CSR (CSC: gives the fix).
    """
    name = key if key == "X" or key.startswith(("obsm/", "layers/")) else f"obsm/{key}"
    node = f.get(name)
    where = f"{path}: {key!r} (/{name})"
    if node is None:
        obsm, layers = _keys(f, "obsm"), [f"layers/{k}" for k in _keys(f, "layers")]
        raise InputError(
            f"{path}: no matrix {key!r} (looked for /{name}); expected 'X', an obsm "
            f"key or 'layers/<name>'. obsm keys: {obsm or 'none'}; layers: "
            f"{layers or 'none'}.{suggest(key, ['X', *obsm, *layers])}"
        )
    if isinstance(node, h5py.Dataset):
        if node.ndim == 2 and np.issubdtype(node.dtype, np.number):
            return node
        raise InputError(f"{where} is a {node.ndim}-D {node.dtype} array; expected 2-D numeric.")
    enc = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", ""))
    enc = enc.decode() if isinstance(enc, bytes) else str(enc)
    if enc in ("csr_matrix", "csr"):
        return node
    if enc in ("csc_matrix", "csc"):
        raise InputError(
            f"{where} is a CSC matrix: reading a row reads every column. Fix: {_CSC_FIX}."
        )
    raise InputError(
        f"{where} has encoding {enc or 'unknown'!r}; expected a dense array or a CSR matrix "
        f"(not a dataframe, awkward array or CSC)."
    )


def _keys(f: h5py.File, group: str) -> list[str]:
    """The element names of ``group`` (none when it is absent)."""
    node = f.get(group)
    return sorted(node.keys()) if isinstance(node, h5py.Group) else []
