"""Every bad input a user may hand perturbflow, as a table (docs/bad_inputs.md lists the same).

Each case gives a bad input to the entry point a user would use (``kedro run`` through a
Kedro session on a copy of the project, or ``perturbflow infer``), and asserts that

* it fails with a message naming the file, column, key or value at fault (``names``),
* no output file was created or changed (a snapshot of the project's ``data/`` and of the
  run and inference files, before and after).

Set ``PERTURBFLOW_BAD_INPUT_MESSAGES=FILE`` to append each case's message to FILE (how the
messages in docs/bad_inputs.md were collected).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.models.training.fit import resume_checkpoint
from tests.bad_inputs.workspace import (
    FEWSHOT,
    Workspace,
    cli,
    make_workspace,
    message_of,
    replaced,
    rewritten_h5ad,
    snapshot,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bad_inputs.md"


@dataclass(frozen=True)
class Case:
    """One bad input: how to give it, and what its message must name."""

    id: str
    trigger: Callable[[Workspace], str]
    names: Callable[[Workspace], list[str]]


def _set_X(change: Callable[[np.ndarray], None]) -> Callable:
    def edit(adata) -> None:
        X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
        change(X)
        adata.X = sp.csr_matrix(X)

    return rewritten_h5ad(edit)


def _raw_case(change: Callable, **params) -> Callable[[Workspace], str]:
    """The preprocessing pipeline on the shipped screen rewritten by ``change``."""

    def trigger(ws: Workspace) -> str:
        with replaced(ws.raw, change):
            return message_of(lambda: ws.run("preprocessing", **params))

    return trigger


def _params_case(pipeline: str, **params) -> Callable[[Workspace], str]:
    return lambda ws: message_of(lambda: ws.run(pipeline, **params))


def _toml_case(old: str, new: str) -> Callable[[Workspace], str]:
    """The splits pipeline with one edit of the few-shot TOML (``old`` a regular expression)."""

    def trigger(ws: Workspace) -> str:
        def write(path: Path) -> None:
            text, n = re.subn(old, new, path.read_text(), count=1, flags=re.DOTALL)
            assert n == 1, old
            path.write_text(text)

        with replaced(ws.root / FEWSHOT, write):
            return message_of(lambda: ws.run("splits"))

    return trigger


def _no_test_table(ws: Workspace) -> str:
    """A split table whose few-shot split holds out no test perturbation (edited by hand)."""
    path = ws.root / "data" / "03_primary" / "splits.parquet"

    def write(p: Path) -> None:
        table = pd.read_parquet(p)
        table["fewshot"] = table["fewshot"].replace({"test": "train"})
        table.to_parquet(p)

    with replaced(path, write):
        return message_of(lambda: ws.run("training", training={"splits": ["fewshot"]}))


def _without_file(ws: Workspace) -> str:
    moved = ws.raw.with_name("moved.h5ad")
    ws.raw.rename(moved)
    try:
        return message_of(lambda: ws.run("preprocessing"))
    finally:
        moved.rename(ws.raw)


def _infer(*extra: str, drop: tuple[str, ...] = ()) -> Callable[[Workspace], str]:
    def trigger(ws: Workspace) -> str:
        args = [a for a in ws.infer_args]
        for flag in drop:  # replace a flag's value
            i = args.index(flag)
            del args[i : i + 2]
        out = ["--output", str(ws.infer_input.with_name("pred.h5ad"))]
        return message_of(cli([*args, *extra, *(out if "--output" not in extra else [])]))

    return trigger


def _infer_on(change: Callable, *extra: str) -> Callable[[Workspace], str]:
    def trigger(ws: Workspace) -> str:
        with replaced(ws.infer_input, change):
            return _infer(*extra)(ws)

    return trigger


def _broken_run_file(name: str, content: Callable[[Path], bytes]) -> Callable[[Workspace], str]:
    def trigger(ws: Workspace) -> str:
        with replaced(ws.run_dir / name, lambda p: p.write_bytes(content(p))):
            return _infer()(ws)

    return trigger


def _unreadable_checkpoints(ws: Workspace) -> str:
    folder = ws.run_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    for name in ("last.ckpt", "step=6.ckpt"):
        (folder / name).write_bytes(b"PK\x03\x04 truncated")
    try:
        return message_of(lambda: resume_checkpoint(folder))
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def _genes(ws: Workspace) -> list[str]:
    return json.loads((ws.run_dir / "genes.json").read_text())


CASES = [
    Case(
        "missing_column",
        _params_case("preprocessing", columns={"pert_col": "perturbaton"}),
        lambda ws: [str(ws.raw), "'perturbaton'", "columns.pert_col", "'perturbation'"],
    ),
    Case(
        "absent_control_label",
        _params_case("preprocessing", columns={"control_label": "ctrl"}),
        lambda ws: [str(ws.raw), "'ctrl'", "columns.control_label", "'condition'"],
    ),
    Case(
        "duplicate_genes",
        _raw_case(rewritten_h5ad(lambda a: setattr(a, "var_names", ["G"] * a.n_vars))),
        lambda ws: [str(ws.raw), "var_names", "'G'"],
    ),
    Case(
        "nan_values",
        _raw_case(_set_X(lambda X: X.__setitem__((slice(0, 3), 0), np.nan))),
        lambda ws: [str(ws.raw), "3 NaN"],
    ),
    Case(
        "negative_values",
        _raw_case(_set_X(lambda X: X.__setitem__((slice(0, 2), 1), -1.0))),
        lambda ws: [str(ws.raw), "2 negative"],
    ),
    Case(
        "counts_expected_log1p_given",
        _params_case("preprocessing", preprocessing={"expected_input": "counts"}),
        lambda ws: [str(ws.raw), "log1p", "expected_input"],
    ),
    Case(
        "knockdown_type_col_missing",
        _raw_case(rewritten_h5ad(lambda a: a.obs.pop("perturbation_type"))),
        lambda ws: [str(ws.raw), "'perturbation_type'", "preprocessing.knockdown.type_col"],
    ),
    Case(
        "raw_file_missing",
        _without_file,
        lambda ws: [str(ws.raw)],
    ),
    Case(
        "toml_syntax",
        _toml_case(r"\[training\]", "[training"),
        lambda ws: [str(ws.root / FEWSHOT), "line"],
    ),
    Case(
        "unknown_perturbation",
        _toml_case(r'"MAP2K3\+SLC38A2",', '"MAP2K3+SLC38A3",'),
        lambda ws: [str(ws.root / FEWSHOT), "'MAP2K3+SLC38A3'"],
    ),
    Case(
        "unknown_cell_type",
        _toml_case(r'\[fewshot\."norman19\.k562"\]', '[fewshot."norman19.k563"]'),
        lambda ws: [str(ws.root / FEWSHOT), "'k563'", "'k562'"],
    ),
    Case(
        "empty_test_split_in_config",
        _toml_case(r"\ntest = \[.*?\]", "\ntest = []"),
        lambda ws: [str(ws.root / FEWSHOT), "no perturbed cell is labelled test"],
    ),
    Case(
        "empty_test_split_in_table",
        _no_test_table,
        lambda ws: ["'fewshot'", "no test perturbation"],
    ),
    Case(
        "mistyped_parameter",
        _params_case("training", training={"max_steps": "abc"}),
        lambda ws: ["max_steps", "'abc'"],
    ),
    Case(
        "ensemble_of_no_network",
        _params_case("training", training={"ensemble": 0}),
        lambda ws: ["training.ensemble is 0", "at least 1"],
    ),
    Case(
        "unknown_parameter_key",
        _params_case("training", training={"max_stepz": 3}),
        lambda ws: ["max_stepz"],
    ),
    Case(
        "infer_missing_genes",
        _infer_on(rewritten_h5ad(lambda a: a._inplace_subset_var(list(a.var_names[3:])))),
        lambda ws: [str(ws.infer_input), *_genes(ws)[:3]],
    ),
    Case(
        "infer_wrong_column_flag",
        _infer("--pert-col", "condition", drop=("--pert-col",)),
        lambda ws: [str(ws.infer_input), "'condition'"],
    ),
    Case(
        "infer_unknown_perturbation",
        _infer_on(
            rewritten_h5ad(
                lambda a: a.obs.__setitem__(
                    "pert", a.obs["pert"].astype(str).replace({"p3": "p9"}).astype("category")
                )
            )
        ),
        lambda ws: ["p9", "--allow-unknown"],
    ),
    Case(
        "infer_nan_values",
        _infer_on(_set_X(lambda X: X.__setitem__((slice(0, 3), 0), np.nan))),
        lambda ws: [str(ws.infer_input), _genes(ws)[0]],
    ),
    Case(
        "infer_output_is_input",
        lambda ws: _infer("--output", str(ws.infer_input))(ws),
        lambda ws: [str(ws.infer_input), "--output", "--adata"],
    ),
    Case(
        "infer_output_folder_read_only",
        lambda ws: _read_only_output(ws),
        lambda ws: [str(ws.infer_input.parent / "read_only")],
    ),
    Case(
        "model_weights_truncated",
        _broken_run_file("model.pt", lambda p: p.read_bytes()[:300]),
        lambda ws: [str(ws.run_dir / "model.pt"), "truncated or corrupt", "rerun the training"],
    ),
    Case(
        "model_weights_random_bytes",
        _broken_run_file("model.pt", lambda p: np.random.default_rng(0).bytes(2048)),
        lambda ws: [str(ws.run_dir / "model.pt"), "truncated or corrupt", "rerun the training"],
    ),
    Case(
        "model_weights_pickle_payload",
        _broken_run_file("model.pt", lambda p: _pickle_payload()),
        lambda ws: [str(ws.run_dir / "model.pt"), "pickled Python objects", "never loads"],
    ),
    Case(
        "run_json_corrupt",
        _broken_run_file("genes.json", lambda p: p.read_bytes()[:-5]),
        lambda ws: [str(ws.run_dir / "genes.json"), "not valid JSON"],
    ),
    Case(
        "checkpoints_unreadable",
        _unreadable_checkpoints,
        lambda ws: [str(ws.run_dir / "checkpoints" / "last.ckpt"), "move", "resume=false"],
    ),
]


def _read_only_output(ws: Workspace) -> str:
    folder = ws.infer_input.parent / "read_only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    try:
        return _infer("--output", str(folder / "pred.h5ad"))(ws)
    finally:
        folder.chmod(0o755)


def _pickle_payload() -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "code": pd.Timestamp(0).to_pydatetime()}, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, trained_run) -> Workspace:
    """One project copy (preprocessed, split) and one run for every case."""
    return make_workspace(tmp_path_factory.mktemp("bad_inputs"), trained_run)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_named_and_changes_nothing(case: Case, workspace: Workspace, monkeypatch):
    monkeypatch.chdir(workspace.root)
    watched = (workspace.root / "data", workspace.run_dir, workspace.infer_input.parent)
    before = snapshot(*watched)
    message = case.trigger(workspace)
    missing = [name for name in case.names(workspace) if name not in message]
    assert not missing, f"{case.id}: {missing} not named in: {message}"
    assert snapshot(*watched) == before, f"{case.id} created or changed a file"
    dump = os.environ.get("PERTURBFLOW_BAD_INPUT_MESSAGES")
    if dump:
        with open(dump, "a", encoding="utf-8") as handle:
            text = message.replace(str(workspace.root) + "/", "").replace(
                str(workspace.infer_input.parent) + "/", ""
            )
            handle.write(json.dumps({"id": case.id, "message": text}) + "\n")


def test_the_docs_table_lists_every_case():
    text = DOCS.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE))
    assert listed >= {c.id for c in CASES}, sorted({c.id for c in CASES} - listed)


def test_a_failed_write_leaves_the_previous_output(workspace: Workspace, monkeypatch):
    """A disk that fills up while the output is written: the previous output is kept whole."""
    import anndata as ad

    from perturbflow.commands import run_cli

    output = workspace.infer_input.with_name("kept.h5ad")
    assert run_cli([*workspace.infer_args, "--output", str(output)]) == 0
    before = snapshot(workspace.infer_input.parent)

    def full_disk(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x89HDF half a file")
        raise OSError(28, "No space left on device", str(filename))

    monkeypatch.setattr(ad.AnnData, "write_h5ad", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        run_cli([*workspace.infer_args, "--output", str(output)])
    assert snapshot(workspace.infer_input.parent) == before  # no half file, no temporary
