"""A case's own model (`model: {factory: ..., file: ..., kwargs: ...}`): check the reference,
then learn the model's structure from the probe, which builds it in a child process.

The user's code runs only after the whole file passed validation, with the trust of a
conftest.py, and only from inside the case's repository; a factory that fails, hangs or crashes
is the case's error, named at its `model:` line.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.core.errors import CaseProblem
from harness.core.user_models import ModelStructure, UserModelRef
from harness.load.loader import LoadedDocument, format_path, quoted

# How long the probe may take to import the user's code, build the model and run one forward.
PROBE_TIMEOUT_S = 300.0
PROBE_MODULE = "harness.run.runners.torch_user_model"
# What marks a folder as the root of the case's repository (the nearest one above the case file).
REPOSITORY_MARKERS = (".git", "pyproject.toml", "setup.cfg", "setup.py", "tox.ini", "pytest.ini")


class ProbeFailed(Exception):
    """The probe could not build or run the model: the message says what the user's code did."""


def is_user_model(raw_model: Any) -> bool:
    """Whether a case's `model:` names a user's factory rather than a model of the table."""
    return isinstance(raw_model, dict)


def repository_root(directory: Path) -> Path:
    """The case's repository: the nearest folder at or above `directory` with a .git or a Python
    project file; `directory` itself when there is none."""
    for folder in (directory, *directory.parents):
        if any((folder / marker).exists() for marker in REPOSITORY_MARKERS):
            return folder
    return directory


def reference_problems(document: LoadedDocument, directory: Path | None) -> list[CaseProblem]:
    """What is wrong with a (schema-valid) user model reference: a file that is missing, outside
    the case's repository or not a file, a factory of the wrong form for it."""
    raw = document.data["model"]
    problems = [
        CaseProblem(
            document.line_of(("model", "kwargs", *where)),
            format_path(("model", "kwargs", *where)),
            f"{what} JSON cannot carry",
            JSON_VALUES,
        )
        for where, what in _not_json(raw.get("kwargs", {}), ())
    ]
    if "file" in raw:
        at = ("model", "file")
        if directory is None:
            return [CaseProblem(document.line_of(at), "model.file", "a generated case has no folder to find the file from", "factory")]
        path = (directory / raw["file"]).resolve()
        root = repository_root(directory.resolve())
        if not path.is_relative_to(root):
            problems.append(
                CaseProblem(
                    document.line_of(at),
                    "model.file",
                    f"{quoted(raw['file'])} is outside the case's repository ({root}); the harness runs model code only from there",
                    "a .py file under " + str(root),
                )
            )
        elif not path.is_file():
            problems.append(CaseProblem(document.line_of(at), "model.file", f"no file {path}", "a .py file, relative to the case file"))
        if ":" in raw["factory"]:
            problems.append(
                CaseProblem(
                    document.line_of(("model", "factory")),
                    "model.factory",
                    f"{quoted(raw['factory'])} names a module, but model.file already says where the factory is",
                    "the factory's name in the file (MyNet, or Outer.build)",
                )
            )
    elif ":" not in raw["factory"]:
        problems.append(
            CaseProblem(
                document.line_of(("model", "factory")),
                "model.factory",
                f"{quoted(raw['factory'])} names no module",
                "package.module:factory, or a model.file with the factory's name in it",
            )
        )
    return problems


JSON_VALUES = "numbers, strings, booleans, null, lists and mappings with text keys (the factory's keyword arguments)"


def _not_json(value: Any, where: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    """(path, what) of every value under `value` that is no JSON value (a YAML date, set or binary)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return []
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _not_json(item, (*where, index))]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _not_json(item, (*where, str(key)))]
    return [(where, f"a {type(value).__name__}")]


def user_model_ref(raw: dict[str, Any], directory: Path | None) -> UserModelRef:
    """The reference of a checked `model:` section."""
    file = str((directory / raw["file"]).resolve()) if "file" in raw and directory is not None else None
    root = repository_root(directory.resolve()) if directory is not None else Path.cwd()
    return UserModelRef(
        factory=raw["factory"], file=file, kwargs_json=json.dumps(raw.get("kwargs", {}), sort_keys=True), repository=str(root)
    )


def probe_structure(ref: UserModelRef, shape: tuple[int, ...], dtype: str, seed: int) -> ModelStructure:
    """The structure of the model the reference makes, for an input of `shape` and `dtype`.

    Raises:
        ProbeFailed: the model could not be imported, built or run, or the probe timed out.
    """
    # An edited file is probed again (a dotted factory's module is not watched: a new process sees it).
    content = hashlib.sha256(Path(ref.file).read_bytes()).hexdigest() if ref.file else ""
    found = _probe(json.dumps({"model": ref.to_json(), "shape": list(shape), "dtype": dtype, "seed": seed}, sort_keys=True), content)
    if isinstance(found, str):
        raise ProbeFailed(found)
    return found


@functools.lru_cache(maxsize=64)
def _probe(request: str, content: str) -> ModelStructure | str:
    """The structure, or why there is none: a failure is remembered too, so that a factory that
    hangs costs its timeout once per run, not once per case that names it."""
    try:
        return _run_probe(request)
    except ProbeFailed as failure:
        return str(failure)


def _run_probe(request: str) -> ModelStructure:
    if importlib.util.find_spec("torch") is None:  # said plainly, not as the probe's import traceback
        raise ProbeFailed("torch is not installed, and a user model is built with it; install it with: pip install torch==2.13.0")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        done = subprocess.run(
            [sys.executable, "-m", PROBE_MODULE], input=request, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, env=env
        )
    except subprocess.TimeoutExpired:
        raise ProbeFailed(f"building the model and one forward took more than {PROBE_TIMEOUT_S:g} s") from None
    try:
        reply = json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = "\n".join(done.stderr.strip().splitlines()[-12:])
        raise ProbeFailed(f"the probe process ended with exit code {done.returncode} before it could reply:\n{tail}") from None
    if "error" in reply:
        raise ProbeFailed(reply["error"])
    return ModelStructure.from_json(reply["structure"])
