"""Parsing STATE/cell-load split TOML files and inline params: every error message."""

from __future__ import annotations

from pathlib import Path

import pytest

from perturbflow.exceptions import InputError
from perturbflow.params import FewshotEntry, SplitSpec
from perturbflow.splits import SplitConfig, load_split_toml, split_config_from_spec

HEADER = '[datasets]\nrep = "rep.h5ad"\ntahoe = "tahoe.h5ad"\n'


@pytest.fixture
def write(tmp_path: Path):
    (tmp_path / "rep.h5ad").write_text("")
    (tmp_path / "tahoe.h5ad").write_text("")

    def _write(body: str, header: str = HEADER) -> Path:
        path = tmp_path / "split.toml"
        path.write_text(header + body)
        return path

    return _write


def test_full_config(write) -> None:
    path = write(
        '[training]\nrep = "train"\n'
        '[zeroshot]\n"tahoe.c1" = "val"\n'
        '[fewshot."rep.k562"]\nval = ["G1", "G2", "G1"]\ntest = ["G3"]\n'
        '[fewshot."rep.hepg2"]\ntest = ["G4"]\n'
    )
    config = load_split_toml(path)
    assert config.source == str(path)
    assert config.training == {"rep": "train"}
    assert config.zeroshot == {("tahoe", "c1"): "val"}
    assert config.fewshot == {
        ("rep", "k562"): {"val": ["G1", "G2"], "test": ["G3"]},
        ("rep", "hepg2"): {"val": [], "test": ["G4"]},
    }
    assert [p.name for p in config.datasets["rep"]] == ["rep.h5ad"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.toml does not exist"):
        load_split_toml(tmp_path / "nope.toml")


def test_syntax_error_has_line_column_and_text(write) -> None:
    path = write("[training]\nrep = train\n")
    with pytest.raises(InputError, match=r"split\.toml: TOML syntax error") as info:
        load_split_toml(path)
    message = str(info.value)
    assert "line 5, column 7" in message
    assert "5 | rep = train" in message


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ('[trainig]\nrep = "train"\n', r"unknown section \[trainig\].*Did you mean 'training'"),
        ('[training]\nrep = "test"\n', r"\[training\] rep = 'test'.*only allowed value is 'train'"),
        ('[zeroshot]\n"rep.k562" = "validation"\n', r"expected 'val' or 'test'"),
        ('[zeroshot]\nrep = "test"\n', r"key 'rep' is not of the form \"dataset.celltype\""),
        (
            '[zeroshot]\nrep.k562 = "test"\n',
            r"nested table in TOML\. Quote the key: \"dataset\.celltype\", "
            r'e\.g\. "rep\.k562" = "test"',
        ),
        (
            '[fewshot.rep.k562]\ntest = ["G1"]\n',
            r"\[fewshot\.rep\.k562\] is parsed by TOML as nested tables\. "
            r"Quote the key: \"dataset\.celltype\", i\.e\. write \[fewshot\.\"rep\.k562\"\]",
        ),
        ('[fewshot.rep]\ntest = ["G1"]\n', r"\[fewshot\] key 'rep' is not of the form"),
        ('[fewshot."rep.k562"]\ntset = ["G1"]\n', r"has key 'tset'; allowed: val, test.*'test'"),
        ('[fewshot."rep.k562"]\ntest = "G1"\n', r"\.test must be a list of perturbation names"),
        ('[fewshot]\n"rep.k562" = "G1"\n', r"must be a table with val and test lists"),
        (
            '[fewshot."rep.k562"]\nval = ["G1"]\ntest = ["G1", "G2"]\n',
            r"lists \['G1'\] in both val and test",
        ),
        (
            '[zeroshot]\n"rep.k562" = "test"\n[fewshot."rep.k562"]\ntest = ["G1"]\n',
            r"'rep\.k562' is in both \[zeroshot\] and \[fewshot.*Keep only one",
        ),
        ('[training]\nreplogle = "train"\n', r"'replogle' is used but not declared.*'rep'"),
        ('[zeroshot]\n"taho.c1" = "test"\n', r"'taho' is used but not declared.*'tahoe'"),
    ],
)
def test_errors(write, body: str, pattern: str) -> None:
    path = write(body)
    with pytest.raises(InputError, match=pattern) as info:
        load_split_toml(path)
    assert str(path) in str(info.value)


def test_section_not_a_table(write) -> None:
    with pytest.raises(InputError, match=r"\[training\] must be a table, got 3"):
        load_split_toml(write("training = 3\n", header=""))


def test_no_datasets_section_is_allowed(write) -> None:
    config = load_split_toml(write('[zeroshot]\n"any.c1" = "test"\n', header=""))
    assert config.datasets == {}
    assert config.zeroshot == {("any", "c1"): "test"}


def _spec(**kwargs) -> SplitSpec:
    fields = {"toml": None, "training": {}, "zeroshot": {}, "fewshot": {}} | kwargs
    return SplitSpec(**fields)


def test_inline_equals_toml(write, tmp_path: Path) -> None:
    path = write(
        '[training]\nrep = "train"\n[zeroshot]\n"tahoe.c1" = "test"\n'
        '[fewshot."rep.k562"]\nval = ["G1"]\ntest = ["G2", "G3"]\n'
    )
    from_toml = split_config_from_spec(_spec(toml=path.name), name="few", project_root=tmp_path)
    inline = split_config_from_spec(
        _spec(
            training={"rep": "train"},
            zeroshot={"tahoe.c1": "test"},
            fewshot={"rep.k562": FewshotEntry(val=["G1"], test=["G2", "G3"])},
        ),
        name="few",
        project_root=tmp_path,
    )
    assert inline.source == "params:few"
    assert inline.datasets == {}
    for field in ("training", "zeroshot", "fewshot"):
        assert getattr(inline, field) == getattr(from_toml, field)


def test_spec_with_toml_and_inline_sections(tmp_path: Path) -> None:
    spec = _spec(toml="a.toml", zeroshot={"rep.c1": "test"})
    with pytest.raises(InputError, match=r"Split 'zs': give either a TOML file.*\['zeroshot'\]"):
        split_config_from_spec(spec, name="zs", project_root=tmp_path)


def test_inline_errors_name_the_split(tmp_path: Path) -> None:
    spec = _spec(zeroshot={"rep": "test"})
    with pytest.raises(InputError, match=r"params:zs: \[zeroshot\] key 'rep' is not of the form"):
        split_config_from_spec(spec, name="zs", project_root=tmp_path)


def test_direct_construction_is_checked() -> None:
    with pytest.raises(InputError, match="in both val and test"):
        SplitConfig(fewshot={("d", "c"): {"val": ["A"], "test": ["A"]}}, source="x")


def test_syntax_error_at_end_of_document(write) -> None:
    with pytest.raises(InputError, match=r"Unclosed array.*\n  5 \| test = \[\"G1\""):
        load_split_toml(write('[fewshot."rep.k562"]\ntest = ["G1"\n'))
