"""Feature tables read from .pt / .npz / .csv: errors name the file, no code runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perturbflow.exceptions import InputError
from perturbflow.loading.features import FEATURE_FORMATS, FeatureTable


@pytest.mark.parametrize("suffix", [".pkl", ".h5", ".json", ""])
def test_unsupported_extension(tmp_path, suffix):
    path = tmp_path / f"feats{suffix}"
    path.write_bytes(b"x")
    with pytest.raises(InputError) as err:
        FeatureTable.load(path)
    assert str(path) in str(err.value)
    assert all(fmt in str(err.value) for fmt in FEATURE_FORMATS)


class _Payload:
    """Pickled into a .pt file: loading must not instantiate it."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_pt_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"KLF1": _Payload()}, path)
    with pytest.raises(
        InputError, match=r"evil.pt: cannot be read as a features file: it holds pickled"
    ):
        FeatureTable.load(path)
    assert "code ran" not in capsys.readouterr().out


OBJECT_NAMES = np.array(["a", "b"], dtype=object)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"names": OBJECT_NAMES, "features": np.ones((2, 2))}, "without pickle"),
        ({"names": np.array(["a"]), "vectors": np.ones((1, 2))}, "needs arrays 'names' and"),
        ({"names": np.array(["a", "a"]), "features": np.ones((2, 2))}, "duplicate or empty names"),
        (
            {"names": np.array(["a", "b"]), "features": np.array([[1, np.nan], [1, 1]])},
            "non-finite values for 'a'",
        ),
        (
            {"names": np.array(["a", "b"]), "features": np.ones((3, 2))},
            "2 names and an array of shape \\(3, 2\\)",
        ),
    ],
)
def test_npz_errors_name_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message) as err:
        FeatureTable.load(path)
    assert "bad.npz" in str(err.value)


def test_pt_and_csv_errors_name_the_file(tmp_path):
    pt = tmp_path / "ragged.pt"
    torch.save({"a": torch.ones(3), "b": torch.ones(4)}, pt)
    with pytest.raises(InputError, match="ragged.pt: vectors of inconsistent dimensions"):
        FeatureTable.load(pt)
    torch.save([1, 2, 3], pt)
    with pytest.raises(InputError, match="ragged.pt holds list"):
        FeatureTable.load(pt)
    csv = tmp_path / "bad.csv"
    csv.write_text("a,1,2\nb,3,x\n")
    with pytest.raises(InputError, match=r"bad.csv: empty or non-numeric values in rows 'b'"):
        FeatureTable.load(csv)
    csv.write_text("a,1,2\nb,3,4,5\n")
    with pytest.raises(InputError, match="bad.csv is not a rectangular CSV"):
        FeatureTable.load(csv)
    csv.write_text("a,1,2\nb,3\n")
    with pytest.raises(InputError, match="bad.csv: empty or non-numeric"):
        FeatureTable.load(csv)
    with pytest.raises(InputError, match="missing.csv does not exist"):
        FeatureTable.load(tmp_path / "missing.csv")
