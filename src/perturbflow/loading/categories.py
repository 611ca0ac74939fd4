"""Category maps: label -> index for cell types, batches or whole perturbation labels.

:class:`CategoryMap` is saved as the run directory's ``celltype_map.json``,
``batch_map.json`` or ``perturbation_map.json``. The JSON and factorising helpers here are
shared with :class:`~perturbflow.loading.encodings.PerturbationEncoder`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path
from perturbflow.loading._messages import listed, near


def _read_json(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Read a JSON object written by ``kind.to_json`` (errors name the file)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputError(f"{kind} file {path} does not exist.") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{kind} file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != f"perturbflow.{kind}":
        raise InputError(f"File {path} is not a {kind} (no 'format': 'perturbflow.{kind}').")
    return data


def _write_json(data: dict[str, Any], path: str | os.PathLike[str] | None) -> str:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return text


def _factorize(values: Any, what: str, *, allow_missing: bool = False) -> tuple[np.ndarray, list]:
    """Codes (int64, -1 if missing) and distinct values as strings, without a loop over cells.

    ``1`` and ``"1"`` are one value (compared as strings); a single string is one value.
    """
    values = [values] if isinstance(values, str) else values
    series = pd.Series(values if hasattr(values, "__len__") else list(values), dtype=object)
    codes, uniques = pd.factorize(series)
    if (codes < 0).any() and not allow_missing:
        where = np.flatnonzero(codes < 0)[:5].tolist()
        raise InputError(f"{int((codes < 0).sum())} missing {what} (e.g. at positions {where}).")
    str_codes, str_uniques = pd.factorize(np.asarray([str(u) for u in uniques], dtype=object))
    out = np.full(len(codes), -1, dtype=np.int64)
    out[codes >= 0] = str_codes[codes[codes >= 0]]
    return out, list(str_uniques)


class CategoryMap:
    """Label -> index for cell types, batches or perturbation labels (sorted at fit).

    Values are compared as strings (JSON keys are strings), so batch ``1`` and ``"1"`` are
    the same category.

    Args:
        categories: The labels, by index.
        name: What they are (``"cell_type"``, ``"batch"``), named in errors.
    """

    def __init__(self, categories: Sequence[str], *, name: str = "values") -> None:
        self.categories = tuple(str(c) for c in categories)
        self.name = name
        if len(set(self.categories)) != len(self.categories):
            raise InputError(f"Category map {name!r} has duplicate labels.")
        self.index = {c: i for i, c in enumerate(self.categories)}

    @classmethod
    def fit(cls, values: Iterable[Any], *, name: str = "values") -> CategoryMap:
        """Map the distinct ``values`` (sorted) to 0..n-1; missing values are refused."""
        return cls(sorted(_factorize(values, f"{name} values")[1]), name=name)

    def __len__(self) -> int:
        return len(self.categories)

    def encode(self, values: Iterable[Any]) -> np.ndarray:
        """Indices (int64) of ``values``; an unseen value raises, listing them all."""
        codes, distinct = _factorize(values, f"{self.name} values")
        mapped = np.asarray([self.index.get(v, -1) for v in distinct], dtype=np.int64)
        if (mapped < 0).any():
            unseen = sorted(v for v, m in zip(distinct, mapped, strict=True) if m < 0)
            raise InputError(
                f"{len(unseen)} {self.name} value(s) not in the fitted map: {listed(unseen)}."
                + near(unseen, self.categories)
                + f" Known: {listed(list(self.categories))}."
            )
        return mapped[codes]

    def decode(self, codes: Iterable[int]) -> np.ndarray:
        """Labels of indices (an out-of-range index raises)."""
        codes = np.asarray(codes, dtype=np.int64)
        if ((codes < 0) | (codes >= len(self))).any():
            raise InputError(f"{self.name} indices outside 0..{len(self) - 1}.")
        return np.asarray(self.categories, dtype=object)[codes]

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Return ``{"index": {label: i}}`` JSON; also write it atomically to ``path``."""
        data = {"format": "perturbflow.CategoryMap", "version": 1, "name": self.name}
        return _write_json({**data, "index": self.index}, path)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> CategoryMap:
        """Read a map written by :meth:`to_json` (indices must be exactly 0..n-1)."""
        data = _read_json(path, "CategoryMap")
        index = data.get("index")
        ok = isinstance(index, dict) and all(type(v) is int for v in index.values())  # no bool
        if not ok or sorted(index.values()) != list(range(len(index))):
            raise InputError(f"Category map {path}: 'index' must map labels to 0..n-1.")
        return cls(sorted(index, key=index.get), name=str(data.get("name", "values")))
