"""Parameter grids: a case file whose `grid:` sweeps fields expands into one case per point.

    grid:
      bn.eps: [1.0e-5, 1.0e-3]
      input.shape: [[2, 3, 4, 4], [16, 3, 4, 4]]
      export.opset: [9, 15, 18]      # every export step of the case
      model, input.shape: [[batchnorm1d, [8, 3]], [batchnorm3d, [2, 3, 2, 2, 2]]]  # varied together
    expect:
      - status: run_failed
        where: {bn.dtype: bfloat16}  # this expectation holds at these points only
        ...

Each point is the file with the grid's values written in; it is validated like any case file,
and a bad value is reported at its line in the grid. Its id is `<file stem>[eps_0.001-opset_9]`:
like pytest's parametrized ids, and selectable with `pytest -k` (which refuses `=` and `,`).
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator
from typing import Any

from harness.core.errors import CaseError, CaseProblem
from harness.load.loader import LoadedDocument, PathKey, quoted

MAX_GRID_POINTS = 256  # a file is a readable unit; a larger sweep belongs in several files
_GRID_KEY = re.compile(
    r"^(?:(?:bn|input|keras|onnx_graph|model_options)\.[a-z_]+|export\.(?:opset|training|dynamic_batch|constant_folding|graph_state|keep_initializers_as_inputs|export_params|external_data)|model|mode|model_seed)$"
)
ALLOWED_KEYS = (
    "bn.<field>, input.<field>, keras.<field>, onnx_graph.<field>, model_options.<field>, export.opset, export.training, "
    "export.dynamic_batch, export.constant_folding, export.graph_state, export.keep_initializers_as_inputs, export.export_params, "
    "export.external_data, model, mode, model_seed"
)


def expand_grid(document: LoadedDocument, stem: str, source: str) -> list[tuple[str, LoadedDocument]]:
    """(case id, document) for each point of the document's grid; the document itself when it has none.

    Raises:
        CaseError: a malformed grid, or an expectation's `where` that names no grid value.
    """
    data = document.data
    if not isinstance(data, dict) or "grid" not in data:
        _refuse_where_without_grid(document, source)
        return [(stem, document)]
    grid = data["grid"]
    problems = list(_grid_problems(document, grid))
    if problems:
        raise CaseError(source, problems)
    columns = _columns(grid)
    names = _short_names(list(columns))
    expanded: list[tuple[str, LoadedDocument]] = []
    first_index: dict[str, tuple[int, ...]] = {}  # of each id: the grid point that has it
    for indices in itertools.product(*(range(len(values)) for values in grid.values())):
        values: dict[str, Any] = {}
        origins: dict[str, PathKey] = {}  # where in the grid each written value stands
        for (key, values_of_key), index in zip(grid.items(), indices):
            fields = _fields(key)
            for position, field in enumerate(fields):
                joint = len(fields) > 1
                values[field] = values_of_key[index][position] if joint else values_of_key[index]
                origins[field] = ("grid", key, index, position) if joint else ("grid", key, index)
        labels = [_model_label(values[field]) if field == "model" else _label(values[field]) for field in columns]
        case_id = f"{stem}[{'-'.join(f'{names[field]}_{label}' for field, label in zip(columns, labels))}]"
        if case_id in first_index:  # values that differ only in what an id cannot show
            where = [", ".join(f"grid.{key}[{index}]" for key, index in zip(grid, at)) for at in (first_index[case_id], indices)]
            raise CaseError(
                source,
                [
                    CaseProblem(
                        document.line_of(("grid",)),
                        "grid",
                        f"points {where[0]} and {where[1]} have the same id {case_id}",
                        "values that differ in their ids",
                    )
                ],
            )
        first_index[case_id] = indices
        expanded.append((case_id, _point_document(document, values, origins, columns)))
    return expanded


def _fields(key: str) -> list[str]:
    """`model, input.shape` -> [model, input.shape]: fields a grid key varies together."""
    return [part.strip() for part in key.split(",")]


def _columns(grid: dict[str, list]) -> dict[str, list[Any]]:
    """Each field the grid varies, with the values it takes."""
    columns: dict[str, list[Any]] = {}
    for key, values in grid.items():
        fields = _fields(key)
        for position, field in enumerate(fields):
            columns[field] = [value[position] for value in values] if len(fields) > 1 else list(values)
    return columns


def _grid_problems(document: LoadedDocument, grid: Any) -> Iterator[CaseProblem]:
    line = document.line_of(("grid",))
    if not isinstance(grid, dict) or not grid:
        yield CaseProblem(line, "grid", "must be a mapping of field to the list of its values", "e.g. {bn.eps: [1.0e-5, 1.0e-3]}")
        return
    size, seen, bad = 1, set(), False
    for key, values in grid.items():
        where = document.line_of(("grid", key))
        fields = _fields(key) if isinstance(key, str) else [key]
        for field in fields:
            if not isinstance(field, str) or not _GRID_KEY.match(field):
                yield CaseProblem(where, f"grid.{key}", f"{quoted(field)} is not a field a grid can sweep", ALLOWED_KEYS)
                bad = True
            elif field in seen:
                yield CaseProblem(where, f"grid.{key}", f"{field} is swept twice", "each field in one grid key")
                bad = True
            seen.add(field)
        if not isinstance(values, list) or not values:
            yield CaseProblem(where, f"grid.{key}", "must be a non-empty list of values")
            bad = True
            continue
        if len(fields) > 1:
            for index, value in enumerate(values):
                if not isinstance(value, list) or len(value) != len(fields):
                    yield CaseProblem(
                        document.line_of(("grid", key, index)),
                        f"grid.{key}[{index}]",
                        f"must list one value for each of the {len(fields)} fields",
                        f"[{', '.join(fields)}]",
                    )
                    bad = True
        size *= len(values)
    if size > MAX_GRID_POINTS:
        yield CaseProblem(line, "grid", f"expands into {size} cases", f"at most {MAX_GRID_POINTS} per file")
    if bad:
        return
    data = document.data
    steps = data.get("steps")
    if any(field.startswith("export.") for field in seen) and not (
        isinstance(steps, list) and any(step_kind(step) == "export" for step in steps)
    ):
        yield CaseProblem(line, "grid", "sweeps an export option, but the case has no export step")
    columns = _columns(grid)
    for index, expectation in enumerate(data.get("expect") or []):
        if isinstance(expectation, dict) and "where" in expectation:
            yield from _where_problems(document, index, expectation["where"], columns)


def _where_problems(document: LoadedDocument, index: int, where: Any, grid: dict[str, list]) -> Iterator[CaseProblem]:
    field = f"expect[{index}].where"
    line = document.line_of(("expect", index, "where"))
    if not isinstance(where, dict) or not where:
        yield CaseProblem(line, field, "must map grid fields to the value (or list of values) it holds at", "e.g. {bn.dtype: float16}")
        return
    for key, wanted in where.items():
        if key not in grid:
            yield CaseProblem(
                document.line_of(("expect", index, "where", key)), f"{field}.{key}", "is not a field of the grid", ", ".join(map(str, grid))
            )
            continue
        for value in _wanted_values(wanted, grid[key]):
            if not _is_value_of(value, grid[key]):
                yield CaseProblem(
                    document.line_of(("expect", index, "where", key)),
                    f"{field}.{key}",
                    f"{quoted(value)} is not one of the grid's values",
                    ", ".join(map(repr, grid[key])),
                )


def _refuse_where_without_grid(document: LoadedDocument, source: str) -> None:
    data = document.data
    if not isinstance(data, dict) or not isinstance(data.get("expect"), list):
        return
    problems = [
        CaseProblem(
            document.line_of(("expect", index, "where")),
            f"expect[{index}].where",
            "selects grid points, but the case has no grid",
            "a grid: section, or no where",
        )
        for index, expectation in enumerate(data["expect"])
        if isinstance(expectation, dict) and "where" in expectation
    ]
    if problems:
        raise CaseError(source, problems)


def _point_document(
    document: LoadedDocument, values: dict[str, Any], origins: dict[str, PathKey], columns: dict[str, list[Any]]
) -> LoadedDocument:
    """The document at one point: the grid's values written in, the expectations that hold there,
    and the line of each written value pointing at the value in the grid."""
    data = copy.deepcopy(document.data)
    del data["grid"]
    lines = {path: line for path, line in document.lines.items() if path[:1] != ("grid",)}
    for key, value in values.items():
        grid_path = origins[key]
        for target in _targets(data, key):
            _write(data, target, copy.deepcopy(value))
            for path in [path for path in lines if path[: len(target)] == target]:
                del lines[path]
            for path, line in document.lines.items():
                if path[: len(grid_path)] == grid_path:
                    lines[target + path[len(grid_path) :]] = line
            lines.setdefault(target, document.line_of(grid_path) or 0)
    if isinstance(data.get("expect"), list):
        kept = []
        for index, expectation in enumerate(data["expect"]):
            if isinstance(expectation, dict) and not _holds_at(expectation.pop("where", {}), values, columns):
                continue
            kept.append((index, expectation))
        data["expect"] = [expectation for _, expectation in kept]
        moved = {
            ("expect", new) + path[2:]: line
            for new, (old, _) in enumerate(kept)
            for path, line in document.lines.items()
            if path[:2] == ("expect", old)
        }
        lines = {path: line for path, line in lines.items() if path[:1] != ("expect",)} | moved
        if not data["expect"]:
            del data["expect"]
    return LoadedDocument(data, lines)


def _targets(data: dict[str, Any], key: str) -> list[PathKey]:
    """Where a grid key writes: `bn.eps` -> [("bn", "eps")]; `export.opset` -> every export step's."""
    if key.startswith("export."):
        option = key.split(".", 1)[1]
        targets: list[PathKey] = []
        for index, step in enumerate(data.get("steps", [])):
            if step_kind(step) != "export":
                continue
            if not isinstance(step, dict) or not isinstance(step.get("export"), dict):
                data["steps"][index] = {"export": {}}
            targets.append(("steps", index, "export", option))
        return targets
    return [tuple(key.split("."))]


def _write(data: dict[str, Any], path: PathKey, value: Any) -> None:
    node: Any = data
    for key in path[:-1]:
        if isinstance(node, dict) and not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def step_kind(step: Any) -> str | None:
    """`forward` for `forward` or `{forward: {...}}`; None for what is not a step (not validated yet)."""
    if isinstance(step, str):
        return step
    if isinstance(step, dict) and len(step) == 1:
        return next(iter(step))
    return None


def _wanted_values(wanted: Any, grid_values: list[Any]) -> list[Any]:
    """A `where` entry's values: one grid value (a shape is a list), or a list of them."""
    return wanted if isinstance(wanted, list) and not _is_value_of(wanted, grid_values) else [wanted]


def _holds_at(where: dict[str, Any], values: dict[str, Any], grid: dict[str, list]) -> bool:
    return all(_is_value_of(values[key], _wanted_values(wanted, grid[key])) for key, wanted in where.items())


def _is_value_of(value: Any, values: list[Any]) -> bool:
    """Equal, with 1 and 1.0 equal but True and 1 not (YAML's `true` is no number)."""
    return any(value == candidate and isinstance(value, bool) == isinstance(candidate, bool) for candidate in values)


def _short_names(keys: list[str]) -> dict[str, str]:
    """The label of each key: its last part (`eps`), the whole key where two would share one."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


_NOT_IN_AN_ID = re.compile(r"[^A-Za-z0-9_.+\-]")  # what pytest -k reads as part of a name


def _model_label(value: Any) -> str:
    """A user model as its id shows it: its factory's name and its kwargs (`TinyResNet+width_4`),
    not the file's path."""
    if not isinstance(value, dict) or "factory" not in value:
        return _label(value)
    name = str(value["factory"]).rsplit(":", 1)[-1]
    kwargs = value.get("kwargs")
    return _label(name) + ("+" + _label(kwargs) if isinstance(kwargs, dict) and kwargs else "")


def _label(value: Any) -> str:
    """A grid value as its id shows it: `0.001`, `2x3x4x4`, `train+bn_eval` for {"": train, bn: eval}."""
    if isinstance(value, list):
        return "x".join(_label(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "+".join(f"{key}_{_label(item)}" if key else _label(item) for key, item in value.items())
    return _NOT_IN_AN_ID.sub("_", str(value))
