"""What the ST model knows about a perturbation: its input vector per (context, perturbation).

A one-hot slot for a perturbation that was never trained is never trained either: STATE
embeds such a perturbation with an untrained vector and predicts noise. Here the vector of
a ``(context, perturbation)`` key concatenates parts that each generalise in their own way:

``identity``
    one learned slot per *training component*; a combination ``A+B`` is the sum of its
    components' slots, so a double whose singles were trained is encoded from them. A
    component never trained contributes nothing (it is reported, never silently zero-filled
    into a fake slot).
``evidence``
    the honest gene-space evidence of the linear baseline
    (:class:`perturbflow.splits.evidence.Evidence`): the sum of the components' training
    effects in the context, else the perturbation's effect in the other training contexts,
    else the target gene's co-expression signature in the context's control cells. None of
    them reads the key's own cells. Divided by one global scale fitted on the training keys.
``target_gene``
    the target gene(s) marked in gene space when measured (which gene is hit, not how).
``features``
    a user's per-component feature table (ESM2, GenePT, ...), combinations summed.
``dose`` (drug screens, :mod:`perturbflow.models.components.dose`)
    with ``dose: log`` the identity slots are per drug *name* and a dose block of the same
    width holds ``x(dose) * e`` (a log-dose coordinate), so an unseen dose of a trained
    drug is encoded between its neighbours instead of being unknown.

A last column marks every non-control perturbation with 1: the control is the all-zero
vector (no effect) and a perturbation the model knows nothing about is ``[0, ..., 0, 1]``
("some perturbation"), so the two are never confused.

During training a sentence's identity part is hidden with probability ``identity_dropout``,
so the model also learns to predict from the other parts, and from nothing at all (then it
predicts the average training response, like ``perturbation_mean``): that is what it does
for a perturbation whose components it never saw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path
from perturbflow.loading.features import FeatureTable
from perturbflow.models.components.dose import (
    DoseEncoding,
    dose_param_values,
    fit_dose_encoding,
    params_for_class,
)
from perturbflow.params import PerturbationInputParams
from perturbflow.splits.data import SplitCells
from perturbflow.splits.effects import TrainingEffects
from perturbflow.splits.evidence import SOURCES, Evidence

Key = tuple[str, str]


@dataclass(frozen=True)
class EncodedPerturbations:
    """Input vectors of some keys and how each was encoded.

    Attributes:
        keys: ``(context, perturbation)`` per row.
        vectors: ``[n_keys, dim]`` float32.
        identity_mask: ``[dim]`` bool, the identity columns (hidden by identity dropout).
        sources: Per key, what it was encoded from (``identity``, ``evidence:<source>``,
            ``target_gene``, ``features``, joined with ``+``; ``none`` when nothing is known).
        unknown_components: Per key, its components that have no identity slot.
    """

    keys: list[Key]
    vectors: np.ndarray
    identity_mask: np.ndarray
    sources: list[str]
    unknown_components: list[list[str]]

    def table(self, prior: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per key: what it was encoded from (``perturbation_sources.csv``).

        Args:
            prior: Per key, the response prior's source, added as a ``prior`` column.
        """
        columns = {
            "context": [c for c, _ in self.keys],
            "perturbation": [p for _, p in self.keys],
            "source": self.sources,
            "unknown_components": ["+".join(u) for u in self.unknown_components],
        }
        if prior is not None:
            columns["prior"] = list(prior)
        return pd.DataFrame(columns)


@dataclass
class PerturbationInputs:
    """Fitted perturbation-input encoder (saved in a run directory as JSON + npz).

    Build it with :meth:`fit`; :meth:`encode` gives the vectors of any keys.

    Attributes:
        params: Which parts are used.
        vocabulary: Training components with an identity slot (sorted).
        genes: Names of the expression space (gene names, or embedding dimensions).
        control_label: The control's label (encoded as all zeros).
        effects: Training effects (evidence is computed from them).
        evidence_scale: Global scale dividing the evidence vectors.
        features: The user's feature table, or ``None``.
        feature_scale: Global scale dividing the feature vectors.
        dose: How doses are read (``None``: ``label``, as runs saved before doses).
    """

    params: PerturbationInputParams
    vocabulary: list[str]
    genes: list[str]
    control_label: str
    effects: TrainingEffects
    evidence_scale: float = 1.0
    features: FeatureTable | None = None
    feature_scale: float = 1.0
    dose: DoseEncoding | None = None
    _slot: dict[str, int] = field(init=False, repr=False)
    _gene_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._slot = {c: i for i, c in enumerate(self.vocabulary)}
        self._gene_index = {g: i for i, g in enumerate(self.genes)}
        if self.dose is None:
            self.dose = DoseEncoding("label", self.control_label)

    @classmethod
    def fit(
        cls,
        data: SplitCells,
        effects: TrainingEffects,
        params: PerturbationInputParams,
        *,
        control_label: str,
    ) -> PerturbationInputs:
        """Fit the vocabulary and scales on the training keys of one split.

        Raises:
            InputError: Nothing enabled, or a features file that does not load.
        """
        if not (params.identity or params.evidence or params.target_gene or params.features_file):
            raise InputError(
                "training.model.inputs: enable at least one of identity, evidence, "
                "target_gene or features_file."
            )
        dose = fit_dose_encoding(
            [p for _, p in effects.keys],
            control_label=control_label,
            # the field is read with a fallback until PerturbationInputParams declares it
            mode=params.dose,
            identity=params.identity,
        )
        vocab = sorted({n for _, p in effects.keys for n, _ in dose.parts(p)})
        features = FeatureTable.load(params.features_file) if params.features_file else None
        inputs = cls(
            params, vocab, list(data.genes), control_label, effects, features=features, dose=dose
        )
        evidence = Evidence(data, effects)
        if params.evidence:
            vecs = [inputs._evidence(evidence, k)[0] for k in effects.keys]
            inputs.evidence_scale = _rms([v for v in vecs if v is not None])
        if features is not None:
            vecs = [inputs._features([n for n, _ in dose.parts(p)])[0] for _, p in effects.keys]
            inputs.feature_scale = _rms([v for v in vecs if v is not None])
        return inputs

    @property
    def dim(self) -> int:
        """Width of an input vector."""
        p, g = self.params, len(self.genes)
        width = len(self.vocabulary) if p.identity else 0
        width += g if p.evidence else 0
        width += g if p.target_gene else 0
        width += self.features.dim if self.features is not None else 0
        width += len(self.vocabulary) if self._dosed else 0  # the dose block
        return width + 1  # the "is perturbed" column

    @property
    def _dosed(self) -> bool:
        return self.params.identity and self.dose is not None and self.dose.uses_dose

    def component_names(self, perturbation: str) -> list[str]:
        """Names of a label's non-control components as the identity slots know them.

        The component labels themselves in ``label`` mode; the drug names (doses parsed
        off) with the ``log`` and ``none`` dose modes.
        """
        return [name for name, _ in self.dose.parts(perturbation)]  # type: ignore[union-attr]

    def identity_mask(self) -> np.ndarray:
        """The identity columns of an input vector."""
        mask = np.zeros(self.dim, dtype=bool)
        if self.params.identity:
            mask[: len(self.vocabulary)] = True
        if self._dosed:  # x * e reveals the identity too: hidden with it
            mask[-1 - len(self.vocabulary) : -1] = True
        return mask

    def _evidence(self, evidence: Evidence, key: Key) -> tuple[np.ndarray | None, str]:
        for source in SOURCES:
            vector = evidence.vector(source, key)
            if vector is not None:
                return vector, source
        return None, ""

    def _features(self, names: list[str]) -> tuple[np.ndarray | None, list[str]]:
        assert self.features is not None
        known = [c for c in names if c in self.features]
        if not known:
            return None, names
        return self.features.lookup(known).sum(axis=0), [c for c in names if c not in known]

    def encode(self, keys: Sequence[Key], data: SplitCells) -> EncodedPerturbations:
        """Input vectors of ``keys``.

        Args:
            keys: ``(context, perturbation)`` pairs; the control label gives zeros.
            data: Cells of the contexts (their control cells give target signatures).

        Returns:
            The vectors and, per key, what they were encoded from.
        """
        p = self.params
        evidence = Evidence(data, self.effects) if p.evidence else None
        n_vocab, g = len(self.vocabulary), len(self.genes)
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        sources, unknown = [], []
        for row, (context, perturbation) in enumerate(keys):
            named = self.dose.parts(perturbation)  # type: ignore[union-attr]
            parts = [name for name, _ in named]
            used, col = [], 0
            missing = [c for c in parts if c not in self._slot]
            if p.identity:
                slots = [self._slot[c] for c in parts if c in self._slot]
                np.add.at(out[row], slots, 1.0)
                if slots:
                    used.append("identity" if not missing else "partial_identity")
                col += n_vocab
            if p.evidence and parts:
                vector, source = self._evidence(evidence, (context, perturbation))
                if vector is not None:
                    out[row, col : col + g] = vector / self.evidence_scale
                    used.append(f"evidence:{source}")
            col += g if p.evidence else 0
            if p.target_gene:
                hits = [self._gene_index[c] for c in parts if c in self._gene_index]
                out[row, col + np.asarray(hits, dtype=np.int64)] = 1.0
                if hits:
                    used.append("target_gene")
                col += g
            if self.features is not None and parts:
                vector, absent = self._features(parts)
                if vector is not None:
                    out[row, col : col + self.features.dim] = vector / self.feature_scale
                    used.append("features")
                missing = sorted(set(missing) & set(absent))
            if self._dosed:
                start = self.dim - 1 - n_vocab
                for name, x in named:
                    if name in self._slot and x is not None:
                        out[row, start + self._slot[name]] += x
                        if "dose" not in used:
                            used.append("dose")
            out[row, -1] = 1.0 if parts else 0.0
            sources.append("+".join(used) if parts else "control")
            if parts and not used:
                sources[-1] = "none"
            unknown.append(missing)
        return EncodedPerturbations(list(keys), out, self.identity_mask(), sources, unknown)

    # ---- persistence ---------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``perturbation_inputs.json`` and ``training_effects.npz`` (no pickles)."""
        directory = os.fspath(directory)
        meta = {
            "format": "perturbflow.PerturbationInputs",
            "version": 2,
            "params": {
                "identity": self.params.identity,
                "evidence": self.params.evidence,
                "target_gene": self.params.target_gene,
                "features_file": self.params.features_file,
                "identity_dropout": self.params.identity_dropout,
                **dose_param_values(self.params),
            },
            "vocabulary": self.vocabulary,
            "genes": self.genes,
            "control_label": self.control_label,
            "evidence_scale": self.evidence_scale,
            "feature_scale": self.feature_scale,
            "features": None if self.features is None else self.features.identity(),
            "effect_keys": [list(k) for k in self.effects.keys],
            "control_contexts": sorted(self.effects.control_means),
            "dose": self.dose.to_dict() if self.dose is not None else None,
        }
        with atomic_path(os.path.join(directory, "perturbation_inputs.json")) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
        contexts = meta["control_contexts"]
        with atomic_path(os.path.join(directory, "training_effects.npz")) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    deltas=self.effects.deltas,
                    n_cells=self.effects.n_cells,
                    control_means=np.vstack([self.effects.control_means[c] for c in contexts]),
                )

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PerturbationInputs:
        """Read what :meth:`save` wrote.

        Raises:
            InputError: Missing or malformed files, or a features file that changed.
        """
        directory = os.fspath(directory)
        path = os.path.join(directory, "perturbation_inputs.json")
        try:
            meta: dict[str, Any] = json.loads(open(path, encoding="utf-8").read())
            arrays = np.load(os.path.join(directory, "training_effects.npz"), allow_pickle=False)
            effects = TrainingEffects(
                keys=[(str(c), str(p)) for c, p in meta["effect_keys"]],
                deltas=arrays["deltas"],
                n_cells=arrays["n_cells"],
                control_means=dict(
                    zip(meta["control_contexts"], arrays["control_means"], strict=True)
                ),
            )
            params = PerturbationInputParams(
                **params_for_class(meta["params"], PerturbationInputParams)
            )
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise InputError(f"{directory}: unreadable perturbation inputs ({err}).") from err
        features = None
        if params.features_file:
            features = FeatureTable.load(meta["features"]["path"])
            if features.sha256 != meta["features"]["sha256"]:
                raise InputError(
                    f"{directory} was trained with features {meta['features']['path']} "
                    f"(sha256 {meta['features']['sha256'][:12]}...), which has changed since."
                )
        return cls(
            params,
            list(meta["vocabulary"]),
            list(meta["genes"]),
            str(meta["control_label"]),
            effects,
            evidence_scale=float(meta["evidence_scale"]),
            features=features,
            feature_scale=float(meta["feature_scale"]),
            # runs saved before doses were read have no "dose": every label its own slot
            dose=DoseEncoding.from_dict(meta.get("dose"), control_label=str(meta["control_label"])),
        )


def _rms(vectors: list[np.ndarray]) -> float:
    """Root mean square norm-per-entry of some vectors (1 when there are none)."""
    if not vectors:
        return 1.0
    stacked = np.vstack(vectors)
    value = float(np.sqrt(np.mean(stacked**2)) * np.sqrt(stacked.shape[1]))
    return value if value > 0 else 1.0
