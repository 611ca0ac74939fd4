"""Perturbation encoding: :class:`PerturbationEncoder`, fitted once and saved as JSON.

A label -> vector map fitted on the training labels. Its feature vectors come from a
:class:`~perturbflow.loading.features.FeatureTable`; cell types, batches and whole labels are
indexed by a :class:`~perturbflow.loading.categories.CategoryMap`. Both still import from
here too.

Encoding (decided here, and saved with the encoder):

* A label is parsed with :func:`~perturbflow.perturbations.parse_perturbation`; a combination
  is the SUM of its components' vectors (the additive model of double perturbations).
* The vocabulary is the sorted set of training component names (control excluded).
  ``mode="onehot"`` gives each one a slot; ``mode="features"`` (a :class:`FeatureTable` given)
  uses its feature vector, and an unseen component is encoded when the table covers it: this
  is how an unseen perturbation generalises. Any other unseen component is an error, never a
  zero vector.
* The control is the empty combination: its components (those of ``control_label``) add
  nothing and the control label is encoded as all zeros, the only label allowed to be. A
  residual model then reads zero as "no perturbation", and ``A + control == A``. A
  non-control label whose encoding would be all zeros (a zero feature row) is an error.
* Dose (``dose_mode="log1p"``): the vector is ``[e, log1p(dose) * e]`` per component (dose in
  µM for concentrations), so a linear read-out gets a per-perturbation response linear in log
  dose and dose 0 keeps the identity part. ``"auto"`` turns it on when the training
  components have more than one distinct dose (drugs), off otherwise (PerturBench's constant
  CRISPR "dose" 1), keeping the dimension ``len(vocabulary)`` or the feature dimension.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from perturbflow.exceptions import InputError, suggest
from perturbflow.loading._messages import listed, near
from perturbflow.loading.categories import CategoryMap, _factorize, _read_json, _write_json
from perturbflow.loading.features import FEATURE_FORMATS, FeatureTable
from perturbflow.perturbations import COMBINATION_SEP, Component, parse_perturbation

# FeatureTable and CategoryMap moved to their own modules; still importable from here.
__all__ = ["FEATURE_FORMATS", "CategoryMap", "FeatureTable", "PerturbationEncoder"]

logger = logging.getLogger(__name__)


class PerturbationEncoder:
    """Perturbation label -> vector, fitted once on the training labels (module docstring).

    Build it with :meth:`fit` or :meth:`from_json`; the constructor takes the fitted state.
    """

    def __init__(
        self,
        *,
        vocabulary: Sequence[str],
        control_label: str,
        mode: Literal["onehot", "features"],
        dose_mode: Literal["none", "log1p"],
        dose_units: Sequence[str | None] = (),
        sep: str = COMBINATION_SEP,
        features: FeatureTable | None = None,
    ) -> None:
        if (mode == "features") != (features is not None):
            raise InputError(
                f"Encoder mode {mode!r}: a FeatureTable goes with mode 'features' only."
            )
        self.vocabulary = tuple(vocabulary)
        self.control_label = control_label
        self.control_names = frozenset(c.name for c in parse_perturbation(control_label, sep=sep))
        self.mode, self.dose_mode, self.sep, self.features = mode, dose_mode, sep, features
        self.dose_units = tuple(dose_units)
        self._slot = {name: i for i, name in enumerate(self.vocabulary)}
        if len(self._slot) != len(self.vocabulary):
            raise InputError("The encoder's vocabulary has duplicate names.")

    @classmethod
    def fit(
        cls,
        labels: Iterable[str],
        *,
        control_label: str,
        dose_col_values: Iterable[str] | None = None,
        features: FeatureTable | None = None,
        dose_mode: Literal["auto", "none", "log1p"] = "auto",
        sep: str = COMBINATION_SEP,
    ) -> PerturbationEncoder:
        """Fit the vocabulary (and dose mode) on the training labels.

        Args:
            labels: The training perturbation labels (one per cell, or unique ones).
            control_label: The control's label; it must be among ``labels``.
            dose_col_values: A dose column aligned with ``labels`` (``"1+1"``), or ``None``.
            features: Feature vectors (``mode="features"``); must cover every training
                component. ``None``: one-hot.
            dose_mode: ``"log1p"`` adds the dose channel, ``"none"`` ignores doses,
                ``"auto"`` adds it when the training components have several doses.
            sep: The combination separator.

        Raises:
            InputError: Malformed labels or doses, no control, no perturbation besides the
                control, or training components missing from ``features``.
        """
        parsed = _parse_unique(labels, dose_col_values, sep)[0]
        if control_label not in {label for label, _ in parsed}:
            raise InputError(
                f"Control label {control_label!r} is not among the training labels."
                + suggest(control_label, [label for label, _ in parsed])
            )
        control = {c.name for c in parse_perturbation(control_label, sep=sep)}
        comps = [c for _, p in parsed.items() for c in p if c.name not in control]
        if not comps:
            raise InputError("The training labels hold no perturbation besides the control.")
        doses = {(c.dose, c.unit) for c in comps if c.dose is not None}
        if dose_mode == "auto":
            dose_mode = "log1p" if len(doses) > 1 else "none"
        vocabulary = sorted({c.name for c in comps})
        if features is not None:
            features.require(vocabulary)
        units = sorted({u for _, u in doses}, key=str) if dose_mode == "log1p" else []
        encoder = cls(
            vocabulary=vocabulary,
            control_label=control_label,
            mode="onehot" if features is None else "features",
            dose_mode=dose_mode,
            dose_units=units,
            sep=sep,
            features=features,
        )
        encoder._encode_parsed(parsed)  # every training label must encode
        logger.info(
            "Perturbation encoder: %d components, %s, dose %s, dim %d",
            len(vocabulary),
            encoder.mode,
            dose_mode,
            encoder.dim,
        )
        return encoder

    @property
    def base_dim(self) -> int:
        """Dimension of one component's identity vector (vocabulary or feature size)."""
        return len(self.vocabulary) if self.features is None else self.features.dim

    @property
    def dim(self) -> int:
        """Dimension of an encoding (twice ``base_dim`` with the dose channel)."""
        return self.base_dim * (2 if self.dose_mode == "log1p" else 1)

    def encode(
        self, labels: Iterable[str], *, dose_col_values: Iterable[str] | None = None
    ) -> np.ndarray:
        """Encode labels (each distinct label, dose pair is parsed once).

        Args:
            labels: Perturbation labels, e.g. one per cell.
            dose_col_values: The dose column aligned with ``labels``, or ``None``.

        Returns:
            ``[len(labels), dim]`` float32; the sum of the components' vectors.

        Raises:
            InputError: Malformed labels, unknown components (listed, with close known
                names), a missing or unseen-unit dose with the dose channel on, or a
                non-control label encoded as all zeros.
        """
        parsed, codes = _parse_unique(labels, dose_col_values, self.sep)
        return self._encode_parsed(parsed)[codes]

    def _encode_parsed(self, parsed: dict[tuple[str, Any], tuple[Component, ...]]) -> np.ndarray:
        """Encode parsed labels: one row per entry of ``parsed``."""
        rows, slots, weights, unknown, undosed = [], [], [], {}, []
        for r, ((label, _), comps) in enumerate(parsed.items()):
            for c in comps:
                if c.name in self.control_names:
                    continue
                slot = self._lookup(c.name)
                if slot is None:
                    unknown.setdefault(c.name, label)
                    continue
                if self.dose_mode == "log1p" and (c.dose is None or c.unit not in self.dose_units):
                    undosed.append(f"{label!r} ({c.name}: {c.dose} {c.unit or ''})".strip())
                rows.append(r)
                slots.append(slot)
                weights.append(np.log1p(c.dose) if c.dose is not None else 0.0)
        self._check(unknown, undosed)
        rows, slots = np.asarray(rows, dtype=np.int64), np.asarray(slots, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32)
        out = np.zeros((len(parsed), self.dim), dtype=np.float32)
        dosed = self.dose_mode == "log1p"
        if self.features is None:  # one-hot: add 1 (and log1p(dose)) at the slots
            np.add.at(out, (rows, slots), 1.0)
            if dosed:
                np.add.at(out, (rows, slots + self.base_dim), weights)
        else:  # a combination is the sum of its components' vectors
            vectors = self.features.vectors[slots]
            np.add.at(out[:, : self.base_dim], rows, vectors)
            if dosed:
                np.add.at(out[:, self.base_dim :], rows, vectors * weights[:, None])
        control = [all(c.name in self.control_names for c in p) for p in parsed.values()]
        zero = ~np.asarray(control, dtype=bool) & ~out.any(axis=1)
        if zero.any():  # only a zero feature row can do this
            bad = [label for (label, _), z in zip(parsed, zero, strict=True) if z]
            raise InputError(
                f"Perturbations {listed(bad)} would be encoded as all zeros (their feature "
                f"vectors in {getattr(self.features, 'source', '?')} are zero)."
            )
        return out

    def _lookup(self, name: str) -> int | None:
        """Row of ``name`` in the one-hot identity or the feature table; ``None`` if unknown."""
        if self.features is None:
            return self._slot.get(name)
        return self.features.index.get(name)

    def _check(self, unknown: dict[str, str], undosed: list[str]) -> None:
        if unknown:
            names = sorted(unknown)
            where = f" nor in features {self.features.source}" if self.features else ""
            raise InputError(
                f"{len(names)} perturbation component(s) unseen in training{where}: "
                f"{listed(names)} (e.g. in {unknown[names[0]]!r})."
                + near(names, self.features.names if self.features else self.vocabulary)
                + ("" if self.features else " Fit with a features table to encode unseen ones.")
            )
        if undosed:
            raise InputError(
                f"The encoder uses doses (units {list(self.dose_units)}), but these components "
                f"have no dose or another unit: {listed(undosed)}."
            )

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-ready data (no feature vectors: their file's identity)."""
        return {
            "format": "perturbflow.PerturbationEncoder",
            "version": 1,
            "mode": self.mode,
            "dose_mode": self.dose_mode,
            "control_label": self.control_label,
            "sep": self.sep,
            "dim": self.dim,
            "vocabulary": list(self.vocabulary),
            "dose_units": list(self.dose_units),
            "features": None if self.features is None else self.features.identity(),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Return the JSON text of :meth:`to_dict`; also write it atomically to ``path``."""
        return _write_json(self.to_dict(), path)

    @classmethod
    def from_json(
        cls, path: str | os.PathLike[str], *, features: FeatureTable | None = None
    ) -> PerturbationEncoder:
        """Read an encoder written by :meth:`to_json`.

        Args:
            path: The JSON file.
            features: The feature table of a ``"features"`` encoder; ``None`` reloads the
                recorded file. Its content must match the recorded digest.

        Raises:
            InputError: Not an encoder file, a missing or mistyped key, a dimension that does
                not match, or features that differ from those it was fitted with.
        """
        data = _read_json(path, "PerturbationEncoder")
        if data.get("mode") not in ("onehot", "features") or data.get("dose_mode") not in (
            "none",
            "log1p",
        ):
            raise InputError(
                f"Encoder file {path}: 'mode' must be 'onehot' or 'features' and 'dose_mode' "
                f"'none' or 'log1p', not {data.get('mode')!r} / {data.get('dose_mode')!r}."
            )
        try:
            ident = data["features"]
            if data["mode"] == "features" and features is None:
                try:
                    features = FeatureTable.load(ident["path"])
                except InputError as err:
                    raise InputError(
                        f"Encoder {path}: {err} Pass features= to use another."
                    ) from err
            if ident is not None and features is not None and features.sha256 != ident["sha256"]:
                raise InputError(
                    f"Encoder {path} was fitted with features {ident['path']} (sha256 "
                    f"{ident['sha256'][:12]}...), but {features.source} differs (sha256 "
                    f"{features.sha256[:12]}...)."
                )
            encoder = cls(
                vocabulary=[str(v) for v in data["vocabulary"]],
                control_label=str(data["control_label"]),
                mode=data["mode"],
                dose_mode=data["dose_mode"],
                dose_units=data["dose_units"],
                sep=str(data["sep"]),
                features=features if data["mode"] == "features" else None,
            )
        except (KeyError, TypeError) as err:
            raise InputError(f"Encoder file {path}: a key is missing or mistyped ({err}).") from err
        if encoder.dim != data.get("dim"):
            raise InputError(
                f"Encoder file {path}: 'dim' {data.get('dim')} != {encoder.dim} computed."
            )
        return encoder


def _parse_unique(
    labels: Iterable[str], doses: Iterable[str] | None, sep: str
) -> tuple[dict[tuple[str, str | None], tuple[Component, ...]], np.ndarray]:
    """Parse each distinct (label, dose) pair once; return them and each input's entry."""
    label_codes, label_values = _factorize(labels, "perturbation labels")
    dose_codes, dose_values = np.full(len(label_codes), -1), []
    if doses is not None:
        dose_codes, dose_values = _factorize(doses, "doses", allow_missing=True)
        if len(dose_codes) != len(label_codes):
            raise InputError(
                f"{len(dose_codes)} dose values for {len(label_codes)} perturbation labels."
            )
    width = len(dose_values) + 1  # a missing dose (code -1) is slot 0
    codes, pairs = pd.factorize(label_codes * width + dose_codes + 1)
    keys = [divmod(int(pair), width) for pair in pairs]
    keys = [(label_values[lab], dose_values[d - 1] if d else None) for lab, d in keys]
    parsed = {(lab, d): parse_perturbation(lab, dose=d, sep=sep) for lab, d in keys}
    return parsed, codes
