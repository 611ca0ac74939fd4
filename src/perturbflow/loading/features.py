"""Feature tables: name -> feature vector (gene or drug embeddings), read without running code.

:class:`FeatureTable` holds validated float32 vectors by name; :meth:`FeatureTable.load` reads
a ``.pt`` (``torch.load(weights_only=True)``), ``.npz`` (no pickles) or ``.csv`` file. A
:class:`~perturbflow.loading.encodings.PerturbationEncoder` in ``mode="features"`` encodes
perturbations with them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from perturbflow.exceptions import InputError
from perturbflow.io_utils import load_tensors
from perturbflow.loading._messages import MAX_LISTED, listed, near

logger = logging.getLogger(__name__)

FEATURE_FORMATS = (".pt", ".npz", ".csv")


class FeatureTable:
    """Feature vectors by name, validated on construction.

    Args:
        names: One unique, non-empty name per row.
        vectors: ``[len(names), dim]`` finite numbers (stored as float32).
        source: Where they come from (named in errors).
    """

    def __init__(self, names: Sequence[str], vectors: Any, *, source: str = "<memory>") -> None:
        self.source = str(source)
        self.names = tuple(str(n) for n in names)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.names) or not len(self.names):
            raise InputError(
                f"Features {self.source}: expected one vector per name, got {len(self.names)} "
                f"names and an array of shape {vectors.shape}."
            )
        counts = pd.Series(self.names).value_counts()
        if (counts > 1).any() or "" in counts.index:
            bad = sorted(counts.index[(counts > 1) | (counts.index == "")])
            raise InputError(f"Features {self.source}: duplicate or empty names {listed(bad)}.")
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = [n for n, ok in zip(self.names, finite, strict=True) if not ok]
            raise InputError(f"Features {self.source}: non-finite values for {listed(bad)}.")
        self.vectors = vectors
        self.index = {n: i for i, n in enumerate(self.names)}
        digest = hashlib.sha256("\n".join(self.names).encode())
        digest.update(np.ascontiguousarray(vectors).tobytes())
        self.sha256 = digest.hexdigest()  # of the content: the same whatever the file format

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureTable:
        """Read a features file: ``.pt``, ``.npz`` or ``.csv``.

        ``.pt``: a ``dict[str, Tensor]`` (one 1-D vector per name) or ``{"names": [...],
        "features": Tensor[n, dim]}``, read with ``torch.load(weights_only=True)``.
        ``.npz``: string array ``names`` and array ``features`` (no pickles). ``.csv``: first
        column the name, the other columns numbers; a first row is a header when its name
        cell is empty, its other cells are not numbers, or they are pandas' ``0, 1, ...``.

        Raises:
            InputError: Missing file, unsupported extension, unexpected structure, duplicate
                names, non-finite values or inconsistent dimensions, naming the file.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in FEATURE_FORMATS:
            raise InputError(
                f"Features file {path}: unsupported extension {path.suffix!r}; "
                f"supported: {', '.join(FEATURE_FORMATS)}."
            )
        if not path.is_file():
            raise InputError(f"Features file {path} does not exist.")
        names, vectors = {".pt": _read_pt, ".npz": _read_npz, ".csv": _read_csv}[suffix](path)
        table = cls(names, vectors, source=str(path))
        logger.info("Features %s: %d names x %d dims", path, len(table), table.dim)
        return table

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.index

    def require(self, names: Iterable[str]) -> None:
        """Raise :class:`InputError` listing the ``names`` this table lacks (if any)."""
        missing = sorted({str(n) for n in names} - self.index.keys())
        if missing:
            raise InputError(
                f"Features {self.source} lack {len(missing)} name(s): {listed(missing)}."
                + near(missing, self.names)
            )

    def lookup(self, names: Sequence[str]) -> np.ndarray:
        """Return the ``[len(names), dim]`` vectors of ``names`` (all must be present)."""
        self.require(names)
        return self.vectors[[self.index[n] for n in names]]

    def identity(self) -> dict[str, Any]:
        """Where the table comes from and a digest of its content (saved with an encoder)."""
        return {"path": self.source, "sha256": self.sha256, "n_names": len(self), "dim": self.dim}


def _read_pt(path: Path) -> tuple[list[str], Any]:
    """Read a ``.pt`` features file without unpickling code."""
    obj = load_tensors(
        path, what="a features file", fix="check the file given as the features path"
    )
    expected = 'a dict of name -> 1-D tensor, or {"names": [...], "features": 2-D tensor}'
    if isinstance(obj, dict) and set(obj) == {"names", "features"}:
        if not isinstance(obj["features"], torch.Tensor) or obj["features"].ndim != 2:
            raise InputError(f"Features file {path}: 'features' must be a 2-D tensor.")
        names = obj["names"]
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise InputError(f"Features file {path}: 'names' must be a list of strings.")
        return list(names), obj["features"].float().numpy()
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"Features file {path} holds {type(obj).__name__}; expected {expected}.")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"Features file {path}: not every value is a tensor; expected {expected}.")
    shapes = {str(k): tuple(v.shape) for k, v in obj.items()}
    dims = {
        v.numel() if v.ndim == 1 or (v.ndim == 2 and v.shape[0] == 1) else -1 for v in obj.values()
    }
    if len(dims) != 1 or -1 in dims:  # 1-D (or [1, d]) vectors of one length
        odd = [f"{k}: {list(s)}" for k, s in list(shapes.items())[:MAX_LISTED]]
        raise InputError(f"Features file {path}: vectors of inconsistent dimensions ({odd}).")
    vectors = torch.stack([v.reshape(-1).float() for v in obj.values()]).numpy()
    return [str(k) for k in obj], vectors


def _read_npz(path: Path) -> tuple[list[str], Any]:
    """Read a ``.npz`` features file (``names`` and ``features``; no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"names", "features"} <= keys:
                raise InputError(
                    f"Features file {path} needs arrays 'names' and 'features'; "
                    f"it has {sorted(keys)}."
                )
            names, vectors = archive["names"], archive["features"]
    except InputError:
        raise
    except Exception as err:  # object arrays need pickle; a corrupt zip fails in several ways
        raise InputError(
            f"Features file {path} cannot be read without pickle ({err}); save 'names' as a "
            "string array (np.array(names, dtype=str))."
        ) from err
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise InputError(f"Features file {path}: 'names' must be a 1-D string array.")
    if vectors.ndim != 2 or vectors.dtype.kind not in "fiu":
        raise InputError(f"Features file {path}: 'features' must be a 2-D numeric array.")
    return names.astype(str).tolist(), vectors


def _read_csv(path: Path) -> tuple[list[str], Any]:
    """Read a ``.csv`` features file: name, then numbers; an optional header row."""
    try:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except Exception as err:  # ragged rows: pandas names the line
        raise InputError(f"Features file {path} is not a rectangular CSV: {err}") from err
    if raw.shape[1] < 2:
        raise InputError(f"Features file {path}: expected a name column and number columns.")
    first = raw.iloc[0, 1:]
    default_columns = first.tolist() == [str(i) for i in range(len(first))]  # pandas' 0..d-1
    if (
        raw.iloc[0, 0] == ""
        or default_columns
        or pd.to_numeric(first, errors="coerce").isna().all()
    ):
        raw = raw.iloc[1:]  # a header row
    values = raw.iloc[:, 1:].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1)
    if bad.any():
        rows = [f"{raw.iloc[i, 0]!r} (line {raw.index[i] + 1})" for i in np.flatnonzero(bad)]
        raise InputError(
            f"Features file {path}: empty or non-numeric values in rows "
            f"{', '.join(rows[:MAX_LISTED])}."
        )
    return raw.iloc[:, 0].str.strip().tolist(), values.to_numpy(np.float32)
