"""The runners: `create_runner` instantiates one from its record in the runner table
(`harness.core.runner_table`), importing only the runner asked for."""

from __future__ import annotations

import importlib
from typing import Any

from harness.core.runner_table import (
    GRAPH_REFERENCES,
    REFERENCE_RUNNER,
    RUNNERS,
    TORCH_FAMILY,
    RunnerRecord,
    graph_runner_names,
    register_runner,
    runner_family,
    runner_names,
    runner_record,
    runner_target,
    shared_walks,
    unregister_runner,
)
from harness.run.runners.base import Runner

__all__ = [
    "GRAPH_REFERENCES",
    "REFERENCE_RUNNER",
    "RUNNERS",
    "TORCH_FAMILY",
    "create_runner",
    "graph_runner_names",
    "instantiate",
    "register_runner",
    "resolve",
    "runner_family",
    "runner_names",
    "runner_target",
    "shared_walks",
    "unregister_runner",
]


def create_runner(name: str) -> Runner:
    """Instantiate the runner called `name`.

    Raises:
        RunnerError: no runner has that name.
    """
    return instantiate(runner_record(name))


def instantiate(record: RunnerRecord) -> Runner:
    """The runner a record names, with its name and record (a worker gets the record itself: a
    runner registered in the main process is not in the worker's table)."""
    runner = resolve(record.target)()
    runner.name, runner.record = record.name, record
    return runner


def resolve(target: str) -> Any:
    """What a `module:name` target names, its module imported now."""
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)
