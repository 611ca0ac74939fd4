"""Kedro hooks of the project (registered in ``settings.py``)."""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl

from perturbflow.logs import route_lightning_logs, use_plain_console


class ConsoleLoggingHooks:
    """Plain console lines off a terminal, and Lightning's lines once (:mod:`perturbflow.logs`)."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """Fix the console handlers once Kedro has configured logging."""
        use_plain_console()
        route_lightning_logs()
