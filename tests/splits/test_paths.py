"""Brace, glob and directory expansion of ``[datasets]`` patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from perturbflow.exceptions import InputError
from perturbflow.splits import expand_braces, load_split_toml, resolve_dataset_pattern


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("plain.h5ad", ["plain.h5ad"]),
        ("{a,b}.h5ad", ["a.h5ad", "b.h5ad"]),
        ("x{a,b{c,d}}y", ["xay", "xbcy", "xbdy"]),
        ("{a,b}/{c,d}", ["a/c", "a/d", "b/c", "b/d"]),
        ("{a,a}", ["a"]),
        ("{lonely}.h5ad", ["{lonely}.h5ad"]),
        ("open{a,b", ["open{a,b"]),
        ("{,x}y", ["y", "xy"]),
    ],
)
def test_expand_braces(pattern: str, expected: list[str]) -> None:
    assert expand_braces(pattern) == expected


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    for rel in ["k562.h5ad", "hepg2.h5ad", "jurkat.h5ad", "notes.txt", "sub/deep.h5ad"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    return tmp_path


def _names(files: list[Path], root: Path) -> list[str]:
    return [str(f.relative_to(root.resolve())) for f in files]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("{k562,hepg2}.h5ad", ["hepg2.h5ad", "k562.h5ad"]),
        ("{k562,{hepg2,jurkat}}.h5ad", ["hepg2.h5ad", "jurkat.h5ad", "k562.h5ad"]),
        ("*.h5ad", ["hepg2.h5ad", "jurkat.h5ad", "k562.h5ad"]),
        ("**/*.h5ad", ["hepg2.h5ad", "jurkat.h5ad", "k562.h5ad", "sub/deep.h5ad"]),
        ("?562.h5ad", ["k562.h5ad"]),
        (".", ["hepg2.h5ad", "jurkat.h5ad", "k562.h5ad"]),
        ("sub/", ["sub/deep.h5ad"]),
        ("{k562.h5ad,*.h5ad,sub}", ["hepg2.h5ad", "jurkat.h5ad", "k562.h5ad", "sub/deep.h5ad"]),
    ],
)
def test_resolve_relative(data_dir: Path, pattern: str, expected: list[str]) -> None:
    files, unmatched = resolve_dataset_pattern(pattern, data_dir)
    assert unmatched == []
    assert _names(files, data_dir) == expected


def test_resolve_absolute_and_unmatched(data_dir: Path) -> None:
    files, unmatched = resolve_dataset_pattern(f"{data_dir}/{{k562,nope}}.h5ad", Path("/"))
    assert _names(files, data_dir) == ["k562.h5ad"]
    assert unmatched == [f"{data_dir}/nope.h5ad"]
    files, _ = resolve_dataset_pattern("missing.h5ad", data_dir, check_files=False)
    assert files == [(data_dir / "missing.h5ad").resolve()]


def test_toml_datasets_resolved_against_toml_dir(data_dir: Path) -> None:
    conf = data_dir / "conf"
    conf.mkdir()
    (conf / "split.toml").write_text(
        '[datasets]\nrep = "../{k562,hepg2}.h5ad"\nall = ".."\nboth = ["../k562.h5ad", "../k*"]\n'
    )
    config = load_split_toml(conf / "split.toml")
    assert {k: _names(v, data_dir) for k, v in config.datasets.items()} == {
        "rep": ["hepg2.h5ad", "k562.h5ad"],
        "all": ["hepg2.h5ad", "jurkat.h5ad", "k562.h5ad"],
        "both": ["k562.h5ad"],
    }


def test_toml_pattern_matching_nothing(data_dir: Path) -> None:
    path = data_dir / "split.toml"
    path.write_text('[datasets]\nrep = "{k562,hepg3}.h5ad"\n')
    with pytest.raises(
        InputError, match=r"split\.toml.*'\{k562,hepg3\}\.h5ad' matches no file.*hepg3"
    ):
        load_split_toml(path)
    assert load_split_toml(path, check_files=False).datasets["rep"][-1].name == "k562.h5ad"
    path.write_text('[datasets]\nrep = "empty_dir"\n')
    (data_dir / "empty_dir").mkdir()
    with pytest.raises(InputError, match="matches no file"):
        load_split_toml(path)
