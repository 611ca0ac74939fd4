"""The perturbation encoder fitted once (one-hot, doses, feature tables), saved as JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from perturbflow.exceptions import InputError
from perturbflow.loading.encodings import PerturbationEncoder
from perturbflow.loading.features import FeatureTable
from perturbflow.perturbations import components


@pytest.fixture
def pb_obs(perturbench) -> pd.DataFrame:
    return perturbench.obs[["condition", "dose", "cell_type"]].copy()


@pytest.fixture
def pb_encoder(pb_obs) -> PerturbationEncoder:
    return PerturbationEncoder.fit(
        pb_obs["condition"], control_label="control", dose_col_values=pb_obs["dose"]
    )


# --- the perturbation encoder on the real PerturBench labels -------------------------------


def test_perturbench_vocabulary_and_shape(pb_obs, pb_encoder):
    expected = sorted({c for label in pb_obs["condition"].unique() for c in components(label)})
    expected.remove("control")
    assert list(pb_encoder.vocabulary) == expected
    assert pb_encoder.mode == "onehot"
    assert pb_encoder.dose_mode == "none"  # PerturBench's CRISPR "dose" is always 1
    x = pb_encoder.encode(pb_obs["condition"], dose_col_values=pb_obs["dose"])
    assert x.shape == (len(pb_obs), len(expected)) and x.dtype == np.float32
    n_parts = pb_obs["condition"].astype(str).map(lambda s: len(components(s))).to_numpy()
    is_control = (pb_obs["condition"] == "control").to_numpy()
    # each non-control cell: one 1 per component; controls: all zeros, and only they
    np.testing.assert_array_equal(x.sum(axis=1), np.where(is_control, 0, n_parts))
    assert set(np.unique(x)) <= {0.0, 1.0}
    np.testing.assert_array_equal(x.any(axis=1), ~is_control)


def test_doubles_are_sums_of_singles(pb_obs, pb_encoder):
    doubles = [c for c in pb_obs["condition"].unique() if "+" in c]
    assert len(doubles) >= 10
    for double in doubles:
        a, b = components(double)
        np.testing.assert_array_equal(
            pb_encoder.encode([double]), pb_encoder.encode([a]) + pb_encoder.encode([b])
        )
    # the control adds nothing
    np.testing.assert_array_equal(pb_encoder.encode(["KLF1+control"]), pb_encoder.encode(["KLF1"]))


def test_fit_is_deterministic_whatever_the_order(pb_obs, pb_encoder):
    shuffled = pb_obs.sample(frac=1.0, random_state=3)
    other = PerturbationEncoder.fit(
        shuffled["condition"], control_label="control", dose_col_values=shuffled["dose"]
    )
    assert other.vocabulary == pb_encoder.vocabulary
    labels = sorted(pb_obs["condition"].unique())
    np.testing.assert_array_equal(other.encode(labels), pb_encoder.encode(labels))
    assert other.to_json() == pb_encoder.to_json()


def test_json_round_trip_gives_identical_encodings(tmp_path, pb_obs, pb_encoder):
    path = tmp_path / "run" / "perturbation_encoder.json"
    text = pb_encoder.to_json(path)
    assert path.read_text() == text
    data = json.loads(text)
    assert data["mode"] == "onehot" and data["dim"] == pb_encoder.dim
    assert data["vocabulary"] == list(pb_encoder.vocabulary) and data["features"] is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    loaded = PerturbationEncoder.from_json(path)
    x = pb_encoder.encode(pb_obs["condition"], dose_col_values=pb_obs["dose"])
    np.testing.assert_array_equal(
        loaded.encode(pb_obs["condition"], dose_col_values=pb_obs["dose"]), x
    )


def test_unseen_components_raise_listing_them(pb_encoder):
    with pytest.raises(InputError) as err:
        pb_encoder.encode(["KLF1", "KLF2+MAPK1", "NOVEL9"])
    message = str(err.value)
    assert "'KLF2'" in message and "'NOVEL9'" in message and "'MAPK1'" not in message.split("~")[0]
    assert "'KLF1'" in message  # a close known name
    assert "features table" in message


def test_fit_errors(pb_obs):
    with pytest.raises(InputError, match="'ctrl' is not among.*'control'"):
        PerturbationEncoder.fit(pb_obs["condition"], control_label="ctrl")
    with pytest.raises(InputError, match="no perturbation besides the control"):
        PerturbationEncoder.fit(["control", "control"], control_label="control")
    with pytest.raises(InputError, match="missing perturbation labels"):
        PerturbationEncoder.fit(["control", None, "A"], control_label="control")
    with pytest.raises(InputError, match="2 dose values for 3"):
        PerturbationEncoder.fit(
            ["control", "A", "B"], control_label="control", dose_col_values=["1", "1"]
        )


# --- doses ------------------------------------------------------------------------------------


def test_dose_channel_for_drugs():
    labels = ["DMSO", "drugA@10nM", "drugA@1uM", "drugB@1uM", "drugA@1uM+drugB_2uM"]
    enc = PerturbationEncoder.fit(labels, control_label="DMSO")
    assert enc.dose_mode == "log1p" and enc.vocabulary == ("drugA", "drugB") and enc.dim == 4
    x = enc.encode(labels)
    expected = [
        [0, 0, 0, 0],
        [1, 0, np.log1p(0.01), 0],
        [1, 0, np.log1p(1.0), 0],
        [0, 1, 0, np.log1p(1.0)],
        [1, 1, np.log1p(1.0), np.log1p(2.0)],
    ]
    np.testing.assert_allclose(x, np.asarray(expected, dtype=np.float32), rtol=1e-6)
    # the same dose written in another unit encodes the same
    np.testing.assert_allclose(enc.encode(["drugA@1000nM"]), enc.encode(["drugA_1uM"]))
    with pytest.raises(InputError, match="no dose or another unit.*'drugA'"):
        enc.encode(["drugA"])
    with pytest.raises(InputError, match="another unit.*mg/kg"):
        enc.encode(["drugA@1mg/kg"])
    off = PerturbationEncoder.fit(labels, control_label="DMSO", dose_mode="none")
    np.testing.assert_array_equal(off.encode(["drugA@10nM"]), off.encode(["drugA@5uM"]))


def test_tahoe_literal_labels(tmp_path):
    labels = [
        "[('DMSO_TF', 0.0, 'uM')]",
        "[('Drug1', 0.05, 'uM')]",
        "[('Drug1', 5.0, 'uM')]",
        "[('Drug2', 500.0, 'nM')]",
    ]
    enc = PerturbationEncoder.fit(labels, control_label=labels[0])
    assert enc.vocabulary == ("Drug1", "Drug2") and enc.dose_mode == "log1p"
    x = enc.encode(labels)
    assert not x[0].any() and x[1:].any(axis=1).all()
    np.testing.assert_allclose(x[3], [0, 1, 0, np.log1p(0.5)], rtol=1e-6)
    encoded_json = PerturbationEncoder.from_json(_write(enc, tmp_path)).encode(labels)
    np.testing.assert_array_equal(encoded_json, x)


def _write(enc: PerturbationEncoder, tmp_path) -> str:
    path = tmp_path / "encoder.json"
    enc.to_json(path)
    return str(path)


# --- feature tables -----------------------------------------------------------------------

NAMES = ["KLF1", "MAP2K6", "NEW1"]
VECTORS = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, -1.0], [3.0, 1.0, 0.25]], dtype=np.float32)


def _write_features(tmp_path, fmt: str, names=NAMES, vectors=VECTORS):
    path = tmp_path / f"feats{fmt}"
    if fmt == ".pt":
        torch.save({n: torch.tensor(v) for n, v in zip(names, vectors, strict=True)}, path)
    elif fmt == ".pt-names":
        path = tmp_path / "feats_table.pt"
        torch.save({"names": list(names), "features": torch.tensor(vectors)}, path)
    elif fmt == ".npz":
        np.savez(path, names=np.array(names, dtype=str), features=vectors)
    elif fmt == ".csv":
        pd.DataFrame(vectors, index=names).to_csv(path, header=False)
    elif fmt == ".csv-header":
        path = tmp_path / "feats_header.csv"
        frame = pd.DataFrame(vectors, index=pd.Index(names, name="gene"))
        frame.columns = [f"f{i}" for i in range(vectors.shape[1])]
        frame.to_csv(path)
    elif fmt == ".csv-pandas":  # pandas' defaults: header ",0,1,2" or "gene,0,1,2"
        path = tmp_path / "feats_pandas.csv"
        pd.DataFrame(vectors, index=names).to_csv(path)
        (tmp_path / "named.csv").write_text(path.read_text().replace(",0,1,2", "gene,0,1,2", 1))
        assert FeatureTable.load(tmp_path / "named.csv").names == tuple(names)
    return path


FORMATS = [".pt", ".pt-names", ".npz", ".csv", ".csv-header", ".csv-pandas"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_features_cover_an_unseen_perturbation(tmp_path, fmt):
    path = _write_features(tmp_path, fmt)
    table = FeatureTable.load(path)
    assert table.names == tuple(NAMES) and table.dim == 3
    np.testing.assert_array_equal(table.vectors, VECTORS)
    train = ["control", "KLF1", "MAP2K6", "KLF1+MAP2K6"]
    enc = PerturbationEncoder.fit(train, control_label="control", features=table)
    assert enc.mode == "features" and enc.vocabulary == ("KLF1", "MAP2K6") and enc.dim == 3
    x = enc.encode(["control", "KLF1+MAP2K6", "NEW1", "NEW1+KLF1"])
    np.testing.assert_array_equal(x[0], 0)
    np.testing.assert_allclose(x[1], VECTORS[0] + VECTORS[1])
    np.testing.assert_allclose(x[2], VECTORS[2])  # unseen in training, covered by the table
    np.testing.assert_allclose(x[3], VECTORS[2] + VECTORS[0])
    with pytest.raises(InputError, match=r"nor in features .*feats.*: 'NEW2'.*'NEW1'"):
        enc.encode(["NEW2"])
    # round trip: the recorded file is reloaded and checked
    loaded = PerturbationEncoder.from_json(_write(enc, tmp_path))
    np.testing.assert_array_equal(loaded.encode(["NEW1+KLF1"]), x[3:])


def test_every_format_has_the_same_content_digest(tmp_path):
    digests = {FeatureTable.load(_write_features(tmp_path, f)).sha256 for f in FORMATS}
    assert len(digests) == 1


def test_changed_features_are_refused(tmp_path):
    table = FeatureTable.load(_write_features(tmp_path, ".npz"))
    enc = PerturbationEncoder.fit(["c", "KLF1"], control_label="c", features=table)
    path = _write(enc, tmp_path)
    other = FeatureTable(NAMES, VECTORS * 2, source="other.npz")
    with pytest.raises(InputError, match="fitted with features .*feats.npz.*other.npz differs"):
        PerturbationEncoder.from_json(path, features=other)


def test_bad_encoder_files(tmp_path, pb_encoder):
    data = json.loads(pb_encoder.to_json())
    path = tmp_path / "enc.json"
    for change, message in [
        ({"mode": "pickle"}, "'mode' must be 'onehot' or 'features'"),
        ({"dim": 7}, "'dim' 7 != 31 computed"),
        ({"vocabulary": ["A", "A"]}, "duplicate names"),
        ({"vocabulary": None}, "missing or mistyped"),
    ]:
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(InputError, match=message):
            PerturbationEncoder.from_json(path)
    del data["sep"]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="enc.json: a key is missing or mistyped \\(.sep.\\)"):
        PerturbationEncoder.from_json(path)
    table = FeatureTable.load(_write_features(tmp_path, ".npz"))
    enc = PerturbationEncoder.fit(["c", "KLF1"], control_label="c", features=table)
    saved = _write(enc, tmp_path)
    (tmp_path / "feats.npz").unlink()
    with pytest.raises(InputError, match="encoder.json: Features file .*feats.npz does not exist"):
        PerturbationEncoder.from_json(saved)
    np.testing.assert_array_equal(
        PerturbationEncoder.from_json(saved, features=table).encode(["KLF1"]), [VECTORS[0]]
    )


def test_features_lacking_training_names(tmp_path):
    table = FeatureTable.load(_write_features(tmp_path, ".csv"))
    with pytest.raises(InputError) as err:
        PerturbationEncoder.fit(
            ["c", "KLF1", "SGK1", "TBX3+KLF1"], control_label="c", features=table
        )
    message = str(err.value)
    assert "feats.csv" in message and "lack 2 name(s): 'SGK1', 'TBX3'" in message
    with pytest.raises(InputError, match="lack 1 name.*'KLF2'.*'KLF1'"):
        table.require(["KLF1", "KLF2"])


def test_zero_feature_vector_is_refused(tmp_path):
    table = FeatureTable(["A", "B"], [[1.0, 0.0], [0.0, 0.0]], source="z.npz")
    with pytest.raises(InputError, match="'B' would be encoded as all zeros"):
        PerturbationEncoder.fit(["c", "A", "B"], control_label="c", features=table)
