"""``python -m perturbflow`` / ``perturbflow``.

``perturbflow train ...`` and ``perturbflow infer ...`` run the library outside a Kedro
session (:mod:`perturbflow.commands`: multi-GPU training, inference on any AnnData); every other
command is the project's Kedro CLI (``perturbflow run`` is ``kedro run``).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(*args: str, **kwargs: object) -> object:
    """Dispatch to :mod:`perturbflow.commands` or the Kedro CLI of this package."""
    argv = list(args) if args else sys.argv[1:]
    if argv and argv[0] in ("train", "infer"):
        from perturbflow.commands import run_cli

        sys.exit(run_cli(argv))
    from kedro.framework.cli.utils import find_run_command
    from kedro.framework.project import configure_project

    package_name = Path(__file__).parent.name
    configure_project(package_name)
    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
