"""Preprocess the Papalexi 2021 THP-1 ECCITE-seq screen with :mod:`perturbflow.preprocess`.

Raw UMI counts in, STATE-ready AnnData out: validate -> normalize_total + log1p ->
on-target knockdown filter (9 of the 25 targets are measured) -> highly variable genes.

Run from the project root (the cells marked ``# %%`` also run as a notebook)::

    /tmp/venv/bin/python notebooks/papalexi_preprocessing.py --out /tmp/papalexi_pp

Without ``--out`` the results go to a new temporary folder. Nothing is written into
``data/01_raw``.
"""

# %%
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import anndata as ad
import pandas as pd

from perturbflow.params import ColumnsParams, KnockdownParams, PreprocessingParams
from perturbflow.preprocess import preprocess_adata, report_to_frame

RAW = Path("data/01_raw/papalexi2021_thp1_sceptre_lowmoi.h5ad")

COLUMNS = ColumnsParams(
    pert_col="perturbation",  # target gene symbol; controls are "non-targeting"
    celltype_col="cell_line",  # one context: THP-1
    batch_col="bio_rep",  # 3 biological replicates
    control_label="non-targeting",
    dataset_col=None,
    dataset_name="papalexi",
)
PARAMS = PreprocessingParams(
    expected_input="counts",  # raw UMI counts: fail if the file turns out to be log1p
    target_sum=None,  # median library size
    n_top_genes=2000,  # capped at the 299 genes of this panel
    hvg_flavor="seurat",
    knockdown=KnockdownParams(  # cell-load's defaults
        enabled=True,
        target_col=None,
        type_col=None,  # every perturbation is a CRISPR knockout
        knockdown_types=[],
        residual_expression=0.30,
        cell_residual_expression=0.50,
        min_cells=30,
    ),
)


# %%
def main(argv: list[str] | None = None) -> Path:
    """Preprocess the screen, write the outputs under ``--out`` and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=RAW, help="raw-count h5ad")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: temp)")
    args = parser.parse_args(argv)
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="papalexi_pp_"))
    if out_dir.resolve().is_relative_to(RAW.parent.resolve()):
        parser.error(f"--out {out_dir} is inside {RAW.parent}: raw data stay read-only")
    out_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    raw = ad.read_h5ad(args.input)
    adata, hvg_genes, report = preprocess_adata(raw, COLUMNS, PARAMS, source=str(args.input))

    adata.write_h5ad(out_dir / "preprocessed.h5ad")
    (out_dir / "hvg_genes.json").write_text(json.dumps(hvg_genes))
    (out_dir / "preprocessing_report.json").write_text(json.dumps(report, indent=2))
    frame = report_to_frame(report)
    frame.to_csv(out_dir / "preprocessing_summary.csv", index=False)

    cells = report["cells"]
    print(f"\ninput {report['input_shape']} ({report['detected_kind']}) -> {report['final_shape']}")
    print(f"normalisation: {report['normalisation']}")
    print(f"HVGs: {report['hvg']['n_selected']} ({report['hvg']['flavor']})")
    print(f"cells: kept {cells['kept']:,} of {cells['input']:,}; dropped {cells['dropped']:,}")
    for reason, n in cells["dropped_by_reason"].items():
        print(f"  {n:>6,}  {reason}")
    perts = report["perturbations"]
    print(f"perturbations: kept {perts['kept']} of {perts['input']}; dropped {perts['dropped']}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        measured = frame[frame["measured"] | frame["is_control"]]
        print(
            measured[
                [
                    "perturbation",
                    "residual_expression",
                    "n_cells_before",
                    "n_cells_after",
                    "kept",
                    "reason",
                ]
            ].to_string(index=False, float_format="{:.3f}".format)
        )
        unmeasured = frame.loc[~frame["measured"] & ~frame["is_control"], "perturbation"]
        print(f"kept, target not measured ({len(unmeasured)}): {', '.join(unmeasured)}")
    print(f"\noutputs in {out_dir}")
    return out_dir


# %%
if __name__ == "__main__":
    main()
