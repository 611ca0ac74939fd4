"""Draw the project's Kedro graph as a Mermaid flowchart (docs/architecture.md embeds it).

The same graph ``kedro viz`` draws, at the level of pipelines and the datasets between them:
one box per pipeline, one rounded node per dataset of the raw ... model_output layers (plus
``metrics``; the views of one file, ``name@view``, are one node, as in kedro-viz), an arrow
for each write and each read. ``python docs/lineage.py`` rewrites the copy in
docs/architecture.md (``--print`` prints it); the test suite checks that copy is current.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOWN_LAYERS = ("raw", "intermediate", "primary", "feature", "models", "model_output")
ALSO_SHOWN = ("metrics",)
BEGIN, END = "```mermaid", "```"


def mermaid() -> str:
    """The flowchart of the registered pipelines (all but ``__default__``)."""
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    sys.path.insert(0, str(ROOT / "src"))
    from kedro.config import OmegaConfigLoader
    from kedro.framework.project import configure_project

    from perturbflow.pipeline_registry import register_pipelines
    from perturbflow.settings import CONFIG_LOADER_ARGS

    configure_project("perturbflow")
    pipelines = {k: v for k, v in sorted(register_pipelines().items()) if k != "__default__"}
    catalog = OmegaConfigLoader(conf_source=str(ROOT / "conf"), **CONFIG_LOADER_ARGS)["catalog"]

    def shown(name: str) -> bool:
        layer = (catalog.get(name) or {}).get("metadata", {}).get("kedro-viz", {}).get("layer")
        return name in ALSO_SHOWN or layer in SHOWN_LAYERS

    def base(name: str) -> str:
        return name.split("@")[0]

    lines = ["flowchart LR"]
    datasets = sorted({base(d) for p in pipelines.values() for d in p.datasets() if shown(d)})
    lines += [f'  d_{d}(["{d}"])' for d in datasets]
    for name, pipe in pipelines.items():
        lines.append(f"  p_{name}[[{name}]]")
        for d in sorted({base(d) for d in pipe.inputs() if shown(d)}):
            lines.append(f"  d_{d} --> p_{name}")
        for d in sorted({base(d) for d in pipe.all_outputs() if shown(d)}):
            lines.append(f"  p_{name} --> d_{d}")
    return "\n".join(lines)


def embedded(markdown: str) -> str:
    """The Mermaid block of a Markdown text (the first one)."""
    start = markdown.index(BEGIN) + len(BEGIN) + 1
    return markdown[start : markdown.index(END, start)].rstrip("\n")


def write_page(page: Path = ROOT / "docs" / "architecture.md") -> None:
    """Replace the Mermaid block of ``page`` with the current graph."""
    text = page.read_text()
    old = embedded(text)
    page.write_text(text.replace(old, mermaid(), 1))


if __name__ == "__main__":
    if "--print" in sys.argv:
        print(mermaid())
    else:
        write_page()
