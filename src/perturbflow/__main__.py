"""``python -m perturbflow`` / ``perturbflow``: run the project's Kedro CLI.

Library commands that must run outside a Kedro session (multi-GPU training, inference)
will be added here as sub-commands; for now everything goes through ``kedro``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project


def main(*args: str, **kwargs: object) -> object:
    """Run the Kedro CLI of this package (same as ``kedro`` inside the project)."""
    package_name = Path(__file__).parent.name
    configure_project(package_name)
    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive
    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
