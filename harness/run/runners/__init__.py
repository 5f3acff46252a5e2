"""The runners: `create_runner` instantiates one by its name in the runner table
(`harness.core.runner_table`), importing only the runner asked for."""

from __future__ import annotations

import importlib

from harness.core.runner_table import (
    GRAPH_REFERENCES,
    REFERENCE_RUNNER,
    RUNNER_CLASSES,
    RUNNER_FAMILIES,
    SHARED_WALKS,
    TORCH_FAMILY,
    graph_runner_names,
    register_runner,
    runner_family,
    runner_names,
    runner_target,
    shared_walks,
    unregister_runner,
)
from harness.run.runners.base import Runner

__all__ = [
    "GRAPH_REFERENCES", "REFERENCE_RUNNER", "RUNNER_CLASSES", "RUNNER_FAMILIES", "SHARED_WALKS", "TORCH_FAMILY",
    "create_runner", "graph_runner_names", "register_runner", "runner_family", "runner_names", "runner_target",
    "shared_walks", "unregister_runner",
]


def create_runner(name: str) -> Runner:
    """Instantiate the runner called `name`.

    Raises:
        RunnerError: no runner has that name.
    """
    module_name, class_name = runner_target(name).split(":")
    return getattr(importlib.import_module(module_name), class_name)()
