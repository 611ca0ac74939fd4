"""On-disk cache of control pairings, keyed by a content hash of everything pairing reads.

cell-load keyed its cached pairing by the dataset's length, so an edited file of the same
size silently reused a stale pairing. Here the key is the sha256 of: the design's codes
(``is_control``, ``context``, ``celltype``, ``batch`` as bytes) and their label lists, the
rows paired, the strategy's name and options, the seed and the file's identity (any
JSON-serialisable dict from the caller, e.g. path, size, ``mtime_ns`` and a fingerprint
from :func:`perturbflow.loading.h5reader.h5ad_identity`). Change any of them and the key
changes. An entry is ``<key>.npz`` (arrays, read with ``allow_pickle=False``) plus
``<key>.json`` (stats, mean-group labels and the key's inputs), both written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path
from perturbflow.loading.pairing import PairingStrategy
from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.pairing_strategies import Pairing

logger = logging.getLogger(__name__)

# Bump when the pairing algorithm changes what a (design, strategy, seed) pairs to.
PAIRING_ALGORITHM_VERSION = 1


def _digest(array: np.ndarray | None) -> str | None:
    """sha256 of an integer array's values (dtype-independent: cast to little-endian int64)."""
    if array is None:
        return None
    data = np.ascontiguousarray(np.asarray(array).astype("<i8", copy=False))
    return hashlib.sha256(data.tobytes()).hexdigest()


def _labels_digest(labels: Sequence[str] | None) -> str | None:
    if labels is None:
        return None
    return hashlib.sha256(json.dumps(list(labels)).encode()).hexdigest()


class PairingCache:
    """Pairings saved under ``directory``, reused only when every input is unchanged.

    Args:
        directory: Where the ``.npz`` + ``.json`` entries live (created on first save).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._inputs: dict[str, dict[str, Any]] = {}

    def key(
        self,
        design: PairingDesign,
        strategy: PairingStrategy,
        *,
        seed: int | Sequence[int],
        identity: dict[str, Any],
        pert_rows: np.ndarray | None = None,
    ) -> str:
        """The content hash (sha256 hex) of everything the pairing depends on.

        Args:
            design: The cells' codes.
            strategy: The strategy (its ``name`` and ``params`` enter the key).
            seed: Seed of the generator the pairing draws from (an int or ints).
            identity: The file's identity (JSON-serialisable dict).
            pert_rows: The rows paired; ``None`` means every perturbed cell.

        Raises:
            InputError: If ``identity``, ``seed`` or the strategy's params are not JSON.
        """
        rows = np.flatnonzero(~design.is_control) if pert_rows is None else pert_rows
        inputs = {
            "algorithm_version": PAIRING_ALGORITHM_VERSION,
            "strategy": strategy.name,
            "params": dict(strategy.params),
            "seed": np.atleast_1d(seed).astype(int).tolist(),
            "identity": identity,
            "n_cells": design.n_cells,
            "n_pairs": len(rows),
            "sha256": {
                "is_control": _digest(design.is_control),
                "context": _digest(design.context),
                "celltype": _digest(design.celltype),
                "batch": _digest(design.batch),
                "pert_rows": _digest(rows),
                "context_labels": _labels_digest(design.context_labels),
                "celltype_labels": _labels_digest(design.celltype_labels),
                "batch_labels": _labels_digest(design.batch_labels),
            },
        }
        try:
            canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
        except TypeError as err:
            raise InputError(
                f"Pairing cache key: the file identity, seed and strategy params must be "
                f"JSON-serialisable ({err}); got identity={identity!r}."
            ) from err
        key = hashlib.sha256(canonical.encode()).hexdigest()
        self._inputs[key] = inputs
        return key

    def paths(self, key: str) -> tuple[Path, Path]:
        """The ``.npz`` and ``.json`` paths of an entry."""
        return self.directory / f"pairing-{key}.npz", self.directory / f"pairing-{key}.json"

    def load(self, key: str) -> Pairing | None:
        """The cached pairing of ``key``, or ``None`` (a miss; unreadable entries too)."""
        npz_path, json_path = self.paths(key)
        if not (npz_path.exists() and json_path.exists()):
            logger.info("Pairing cache miss: %s", key[:16])
            return None
        try:
            meta = json.loads(json_path.read_text())
            with np.load(npz_path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            if meta["key"] != key or len(arrays["control_rows"]) != meta["stats"]["n_pairs"]:
                raise ValueError("entry does not match its key")
            pairing = Pairing(
                control_rows=arrays["control_rows"],
                fallback=arrays["fallback"].astype(bool),
                mean_group=arrays.get("mean_group"),
                mean_groups=[tuple(g) for g in meta["mean_groups"]],
                stats=meta["stats"],
            )
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
            logger.warning(
                "Pairing cache entry %s is unreadable (%s); pairing again", npz_path, err
            )
            return None
        logger.info("Pairing cache hit: %s (%d pairs)", npz_path, len(pairing.control_rows))
        return pairing

    def save(self, key: str, pairing: Pairing) -> Path:
        """Write the entry of ``key`` atomically (arrays first, then the JSON sidecar).

        Returns:
            The ``.npz`` path.
        """
        npz_path, json_path = self.paths(key)
        arrays = {"control_rows": pairing.control_rows, "fallback": pairing.fallback}
        if pairing.mean_group is not None:
            arrays["mean_group"] = pairing.mean_group
        with atomic_path(npz_path) as tmp, tmp.open("wb") as handle:
            np.savez(handle, **arrays)  # a file handle: np.savez would append ".npz" to a path
        meta = {
            "key": key,
            "inputs": self._inputs.get(key),
            "stats": pairing.stats,
            "mean_groups": [list(g) for g in pairing.mean_groups],
        }
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(meta, indent=1, default=_json_default))
        logger.info("Pairing cache saved: %s", npz_path)
        return npz_path

    def get_or_pair(
        self,
        design: PairingDesign,
        strategy: PairingStrategy,
        *,
        seed: int | Sequence[int],
        identity: dict[str, Any],
        pert_rows: np.ndarray | None = None,
    ) -> Pairing:
        """Load the pairing if cached, else pair with ``np.random.default_rng(seed)`` and save."""
        rows = np.flatnonzero(~design.is_control) if pert_rows is None else pert_rows
        key = self.key(design, strategy, seed=seed, identity=identity, pert_rows=rows)
        pairing = self.load(key)
        if pairing is None:
            pairing = strategy.pair(design, rows, np.random.default_rng(seed))
            self.save(key, pairing)
        return pairing


def _json_default(value: Any) -> Any:
    """Turn numpy scalars in stats into plain numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
