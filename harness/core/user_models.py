"""A user's own torch model: where its factory is, and what the harness found inside it.

A case names the model by factory (`model: {factory: mypkg.models:build, kwargs: {...}}` or
`model: {file: models/my_net.py, factory: MyNet}`); the loader checks the reference, then the
structure probe (`harness.run.runners.torch_user_model`, in a child process) builds it once and
reports its submodules and BatchNorms as plain data, `ModelStructure`. Everything that reads a
model table entry (`ModelSpec`: submodule paths, BatchNorm paths) reads the same from the structure,
so that modes, per-BatchNorm configuration, expectations and attribution work on a user model as
they do on the table's. This module imports no framework.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.core.models import Layer, ModelSpec

# Module classes of the structure that the model table's layer kinds stand for (the Keras port
# and the validation read `kind`).
BATCHNORM = "batchnorm"
MODULE = "module"


@dataclass(frozen=True, slots=True)
class UserModelRef:
    """Where a case's model is made: `factory` is `package.module:attribute` (imported with the
    case's repository on sys.path), or with `file` the attribute's name in that Python file."""

    factory: str
    file: str | None = None  # absolute path of the Python file
    kwargs_json: str = "{}"  # factory(**kwargs), as JSON text: a case is hashable, its values may be lists
    repository: str = ""  # the case's repository root: what a dotted module is imported from

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments the factory is called with."""
        return dict(json.loads(self.kwargs_json))

    @property
    def display(self) -> str:
        """How reports name the model: `my_net.py:MyNet`, `mypkg.models:build_backbone`."""
        if self.file is None:
            return self.factory
        return f"{self.file.rsplit('/', 1)[-1]}:{self.factory}"

    def to_json(self) -> dict[str, Any]:
        """The reference as the probe and the repro scripts take it."""
        return {"factory": self.factory, "file": self.file, "kwargs": self.kwargs, "repository": self.repository}


@dataclass(frozen=True, slots=True)
class BatchNormFacts:
    """One BatchNorm the probe found, as its module holds it after the factory built it."""

    path: str
    class_name: str
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    # A module with running buffers that is no torch BatchNorm (a frozen BatchNorm): it always
    # normalises with its running statistics and never updates them.
    frozen: bool = False


@dataclass(frozen=True, slots=True)
class ModelStructure:
    """What the probe found in a user model: every submodule (named_modules order), every
    BatchNorm, the output's shape, and the traced graph the Keras port reads (None: torch.fx
    could not trace the model, `untraceable` says why)."""

    modules: tuple[tuple[str, str], ...]  # (path, class name); "" is the model itself
    batchnorms: tuple[BatchNormFacts, ...]
    output_shape: tuple[int, ...]
    # The traced graph and each mapped module's constructor facts, as JSON text (nested dicts and
    # lists, which a hashable case cannot hold as they are): see `graph` and `leaf_modules`.
    graph_json: str = "null"
    untraceable: str | None = None
    leaf_modules_json: str = "{}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelStructure:
        """The structure the probe printed."""
        return cls(
            modules=tuple((path, name) for path, name in data["modules"]),
            batchnorms=tuple(BatchNormFacts(**facts) for facts in data["batchnorms"]),
            output_shape=tuple(data["output_shape"]),
            graph_json=json.dumps(data.get("graph")),
            untraceable=data.get("untraceable"),
            leaf_modules_json=json.dumps(dict(data.get("leaf_modules", []))),
        )

    @property
    def graph(self) -> list[dict[str, Any]] | None:
        """The forward as torch.fx traced it: nodes {name, op, target, args, kwargs}; None: untraceable."""
        graph: list[dict[str, Any]] | None = _parsed(self.graph_json)  # shared: read-only
        return graph

    @property
    def leaf_modules(self) -> dict[str, dict[str, Any]]:
        """Constructor facts (kernel_size, stride, ...) of each module the Keras port maps, by path."""
        return dict(json.loads(self.leaf_modules_json))

    def batchnorm(self, path: str) -> BatchNormFacts:
        """The facts of the BatchNorm at `path`."""
        return next(facts for facts in self.batchnorms if facts.path == path)

    def spec(self, display: str, input_rank: int) -> ModelSpec:
        """The structure as a model table entry: a tree of `module` layers whose BatchNorms are
        `batchnorm` layers (each with its own values under `bn`, as `bn_by_path` gives them)."""
        bn_paths = {facts.path: facts for facts in self.batchnorms}
        nodes: dict[str, dict[str, Any]] = {}
        for path, class_name in self.modules:
            name = path.rsplit(".", 1)[-1] if path else None
            kind = BATCHNORM if path in bn_paths else MODULE
            layer: dict[str, Any] = {"kind": kind, "name": name, "class": class_name, "layers": []}
            if kind == BATCHNORM:
                facts = bn_paths[path]
                layer["bn"] = {"num_features": facts.num_features, "eps": facts.eps, "momentum": facts.momentum}
            nodes[path] = layer
            if path:
                parent = path.rsplit(".", 1)[0] if "." in path else ""
                nodes[parent]["layers"].append(layer)
        root: Layer = nodes[""]
        return ModelSpec(display, f"{display}, a user model", root, (input_rank,), user=True)


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> Any:
    """JSON text parsed once (a traced graph is read at every export and by the order of the
    BatchNorms); callers only read the result."""
    return json.loads(text)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A submodule path pattern as a regular expression: `*` within one dotted segment, `**` any
    number of segments (none included), `?` one character; `""` is the model itself."""
    if pattern == "":
        return re.compile("")
    parts = []
    segments = pattern.split(".")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            parts.append(".*" if last else r"(?:[^.]+\.)*")
            continue
        text = "".join("[^.]*" if char == "*" else "[^.]" if char == "?" else re.escape(char) for char in segment)
        parts.append(text if last else text + r"\.")
    return re.compile("".join(parts))


def is_pattern(path: str) -> bool:
    """Whether a mode key is a pattern rather than one submodule's path."""
    return any(char in path for char in "*?")


def matching_paths(pattern: str, paths: Iterable[str]) -> list[str]:
    """The paths a pattern (or a plain path) names, in the model's order."""
    if not is_pattern(pattern):
        return [path for path in paths if path == pattern]
    regex = pattern_regex(pattern)
    return [path for path in paths if path and regex.fullmatch(path)]


def expand_mode(assignments: Sequence[tuple[str, bool]], paths: Sequence[str]) -> list[tuple[str, bool]]:
    """Mode keys (paths or patterns) as the per-submodule calls a user writes: every pattern
    becomes one `.train(flag)` per submodule it names, in the model's order."""
    expanded: list[tuple[str, bool]] = []
    for key, training in assignments:
        expanded += [(path, training) for path in matching_paths(key, paths)] if is_pattern(key) else [(key, training)]
    return expanded
