"""Validate a case file against the schema and the few cross-field rules it cannot express,
then build the `Case`. Every problem in a file is reported at once, each with line and field.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core.case import (
    BNConfig,
    Case,
    GraphCase,
    KerasOptions,
    Step,
)
from harness.core.errors import CaseError, CaseProblem
from harness.core.fields import field_matches, known_fields
from harness.core.models import MODEL_SPECS, ModelSpec, layer_sizes, model_spec
from harness.core.runner_table import REFERENCE_RUNNER, runner_names
from harness.core.user_models import ModelStructure, is_pattern, matching_paths
from harness.load.build import (
    build_expectations,
    build_input,
    build_tolerance,
    expand_steps,
    input_size_problems,
    merged_step_input,
    mode_setting,
    refused_under,
    validation_problems,
)
from harness.load.graph_schema import graph_case_from_document, is_graph_case
from harness.load.grid import expand_grid, step_kind
from harness.load.loader import LoadedDocument, PathKey, format_path, load_yaml, quoted
from harness.load.schemas import case_schema
from harness.load.user_model import ProbeFailed, is_user_model, probe_structure, reference_problems, user_model_ref


def load_cases(path: Path, display_path: str | None = None) -> tuple[Case | GraphCase, ...]:
    """Load, validate and build the cases in `path`: one, or one per point of its `grid:`.

    Raises:
        CaseError: with every problem found in the file (at the first point that has any).
    """
    source = display_path or str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CaseError(source, [CaseProblem(None, "", f"cannot read the file: {error.strerror or error}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise CaseError(source, [CaseProblem(line, "", f"not UTF-8 text (byte 0x{data[error.start]:02x})", "a UTF-8 text file")]) from None
    try:
        document = load_yaml(text, source)
        cases: list[Case | GraphCase] = []
        for case_id, point in expand_grid(document, path.stem, source):
            if is_graph_case(point.data):
                cases.append(graph_case_from_document(point, case_id=case_id, source=source, directory=path.parent))
            else:
                cases.append(case_from_document(point, case_id=case_id, source=source, directory=path.parent))
    except CaseError:
        raise
    except Exception as error:  # a bug of the loader: this file's problem, never the end of the run
        message = f"the harness failed to load this file ({type(error).__name__}: {error}); a bug in bn-harness, please report it"
        raise CaseError(source, [CaseProblem(None, "", f"{message}\n{traceback.format_exc()}")]) from error
    return tuple(cases)


def load_case(path: Path, display_path: str | None = None) -> Case | GraphCase:
    """The one case in `path` (a file without a grid).

    Raises:
        CaseError: a problem in the file, or a grid (use `load_cases`).
    """
    cases = load_cases(path, display_path)
    if len(cases) != 1:
        raise CaseError(
            display_path or str(path), [CaseProblem(None, "grid", f"the file is a grid of {len(cases)} cases", "load it with load_cases")]
        )
    return cases[0]


def case_from_document(document: LoadedDocument, case_id: str, source: str, directory: Path | None = None) -> Case:
    """Validate a loaded document (from a file in `directory`, or generated) and build its `Case`.

    Raises:
        CaseError: with every problem found.
    """
    problems = validation_problems(
        document, case_schema(), lambda checked, refused: cross_field_problems(checked, refused, directory=directory)
    )
    if problems:
        raise CaseError(source, problems)
    return build_case(document, case_id=case_id, source=source, directory=directory)


def cross_field_problems(
    document: LoadedDocument, refused: frozenset[str] = frozenset(), directory: Path | None = None
) -> list[CaseProblem]:
    """Rules between fields: shapes against the model and num_features, paths, expectations. Each
    rule runs when the fields it reads are present and the schema did not refuse them (`refused`),
    so that a file's problems come at once, not in rounds: a misspelt runner does not hide a mode
    path that names no submodule. A user model is built (by the probe) only for a file that
    passed every other check: its rules run then."""
    data = document.data
    if not isinstance(data, dict) or not _readable(data, refused, "model"):
        return []  # every rule reads the model
    if is_user_model(data["model"]):
        return _user_model_problems(document, refused, directory)
    if data["model"] not in MODEL_SPECS:
        return []
    problems: list[CaseProblem] = []
    try:
        options = data.get("model_options") if _readable(data, refused, "model_options") else None
        for problem in _cross_field_rules(document, _CrossFieldChecks(document, model_spec(data["model"], options)), refused):
            problems.append(problem)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        if not refused:  # a well-formed file: a rule that fails on it is a bug, reported as one
            raise
        # else a rule met a malformed part the schema has already reported: the problems found stand
    return problems


def _user_model_problems(document: LoadedDocument, refused: frozenset[str], directory: Path | None) -> list[CaseProblem]:
    """A user model's reference, then (on a file without other problems) the rules on what the
    probe found in the model."""
    data = document.data

    def problem(path: PathKey, message: str, allowed: str | None = None) -> CaseProblem:
        return CaseProblem(document.line_of(path), format_path(path), message, allowed)

    problems = reference_problems(document, directory)
    for name in data.get("bn", {}) if isinstance(data.get("bn"), dict) else ():
        if name != "dtype":
            problems.append(
                problem(
                    ("bn", name),
                    "a user model's BatchNorms keep what its code gives them; set one BatchNorm's values with bn_by_path",
                    "dtype",
                )
            )
    if "model_options" in data:
        problems.append(
            problem(("model_options",), "model_options change the model table's models, not a user model", "the factory's kwargs")
        )
    problems += input_size_problems(document) if _readable(data, refused, "input") else []
    if problems or refused:
        return problems  # the user's code runs only for a file without any other problem
    dtype = data.get("bn", {}).get("dtype", "float32")
    ref = user_model_ref(data["model"], directory)
    try:
        structure = probe_structure(ref, tuple(data["input"]["shape"]), dtype, data.get("model_seed", 0))
    except ProbeFailed as failure:
        return [problem(("model",), f"the model could not be built and run:\n{failure}", "a factory that returns a torch.nn.Module")]
    if not structure.batchnorms:
        classes = ", ".join(dict.fromkeys(name for _, name in structure.modules))
        return [
            problem(
                ("model",),
                f"no BatchNorm in the model (its modules: {classes})",
                "a model with torch BatchNorms, or modules holding running_mean and running_var buffers",
            )
        ]
    spec = structure.spec(ref.display, len(data["input"]["shape"]))
    return list(_cross_field_rules(document, _CrossFieldChecks(document, spec, structure), refused))


def _readable(data: dict[str, Any], refused: frozenset[str], *roots: str) -> bool:
    """The top-level fields `roots` are present and the schema refused nothing in them."""
    return all(root in data for root in roots) and not refused_under(refused, *roots)


def _cross_field_rules(document: LoadedDocument, checks: _CrossFieldChecks, refused: frozenset[str]) -> Iterator[CaseProblem]:
    data = document.data
    # A user model's BatchNorms have their own configuration (the probe's), and no bn: beyond dtype.
    bn_known = checks.structure is not None or _readable(data, refused, "bn")
    if _readable(data, refused, "input") and bn_known:
        yield from checks.input_shape()
    if _readable(data, refused, "bn") and checks.structure is None:
        yield from checks.bn_vectors()
    if bn_known and isinstance(data.get("bn_by_path"), dict):
        yield from checks.bn_by_path(refused)
    if _readable(data, refused, "mode"):
        yield from checks.mode_paths(("mode",), data["mode"])
    raw_steps = data["steps"] if isinstance(data.get("steps"), list) else []
    for index, raw in enumerate(raw_steps):
        if refused_under(refused, f"steps[{index}]"):
            continue
        if isinstance(raw, dict) and "set_mode" in raw:
            yield from checks.mode_paths(("steps", index, "set_mode"), raw["set_mode"])
        if _readable(data, refused, "input") and bn_known:
            yield from checks.step_inputs(index, raw)
        if bn_known:
            yield from checks.state_steps(index, raw)
        own_values = isinstance(raw, dict) and isinstance(raw.get("train_step"), dict) and "input" in raw["train_step"]
        if step_kind(raw) == "train_step" and not own_values and _readable(data, refused, "input") and "values" in data["input"]:
            yield checks.problem(
                ("steps", index),
                "train_step draws new seeded batches, but the input is literal values",
                "forward steps, a seeded distribution under input, or the train_step's own input",
            )
    # The step count is known while every step is well formed (train_step repeats count one each).
    steps = list(expand_steps(data["steps"], data["input"], "float32")) if _readable(data, refused, "steps", "input") else None
    step_count = None if steps is None else len(steps)
    for index, raw in enumerate(data["expect"] if isinstance(data.get("expect"), list) else []):
        if isinstance(raw, dict) and f"expect[{index}]" not in refused:  # its own malformed parts are left out below
            yield from checks.expectation(("expect", index), raw, step_count, refused)
    if data.get("torch_memory_format") == "channels_last" and _readable(data, refused, "input"):
        rank = len(data["input"]["shape"])
        if rank not in (4, 5):
            yield checks.problem(
                ("torch_memory_format",), f"channels_last is a format of 4-d and 5-d tensors; the input has rank {rank}", "contiguous"
            )
    if _readable(data, refused, "keras") and data["keras"].get("layout") == "channels_first" and checks.spec.has_convolutions:
        yield checks.problem(
            ("keras", "layout"),
            f"model {checks.spec.name!r} has convolutions, which the port runs channels-last (TensorFlow's CPU Conv2D takes NHWC only)",
            "channels_last, or a bare BatchNorm model",
        )
    if _readable(data, refused, "keras"):
        yield from checks.keras_training_loop(data["keras"], steps)
    axis = data["keras"].get("axis") if _readable(data, refused, "keras") else None
    if axis is not None and _readable(data, refused, "input"):
        rank = len(data["input"]["shape"])
        if not -rank <= axis < rank:
            yield checks.problem(("keras", "axis"), f"axis {axis} is outside an input of rank {rank}", f"{-rank}..{rank - 1}")


class _CrossFieldChecks:
    def __init__(self, document: LoadedDocument, spec: ModelSpec, structure: ModelStructure | None = None) -> None:
        self.document, self.spec, self.data = document, spec, document.data
        self.structure = structure  # a user model's, as the probe found it

    def keras_training_loop(self, keras: dict[str, Any], steps: list[Step] | None) -> Iterator[CaseProblem]:
        """`keras.train_with: fit` needs train steps to fit and a training= to pass; `fit_batch_size`
        a fit; the unbiased re-expression of the moving variance one update per step. `steps`: the
        case's, expanded (None while they are malformed)."""
        if "fit_batch_size" in keras and keras.get("train_with") != "fit":
            yield self.problem(("keras", "fit_batch_size"), "a Model.fit's batch_size, but train_with is not fit", "train_with: fit")
        if keras.get("train_with") == "fit" and keras.get("training_argument") == "omitted":
            yield self.problem(
                ("keras", "training_argument"),
                "omitted reproduces a call without training=, which Model.fit never makes: it hands training=True to every layer",
                "explicit or model, or train_with: call",
            )
        if keras.get("train_with") != "fit" or steps is None:
            return
        train_sizes = [
            (index, (step.input.shape if step.input else self.data["input"]["shape"])[0])
            for index, step in enumerate(steps)
            if step.kind == "train_step"
        ]
        if not train_sizes:
            yield self.problem(
                ("keras", "train_with"), "Model.fit trains at train_step steps, and this case has none", "call, or a train_step"
            )
            return
        batch_size = keras.get("fit_batch_size", 32)
        several = [(index, size) for index, size in train_sizes if size > batch_size]
        if keras.get("running_var") == "unbiased" and several:
            index, size = several[0]
            updates = -(-size // batch_size)
            yield self.problem(
                ("keras", "running_var"),
                f"the fit at step {index} takes its batch of {size} in {updates} mini-batches of up to {batch_size}, one update each, "
                "and the unbiased re-expression of the moving variance reads one update per step",
                f"as_stored, or fit_batch_size >= {max(size for _, size in several)}",
            )

    def needs(self, option: str) -> str:
        """What a rule asks for: `bn.affine: true` in a model of the table, where the case sets it;
        a BatchNorm built so, in a user model, whose code does."""
        return f"a BatchNorm built with {option}=True" if self.structure is not None else f"bn.{option}: true"

    def bn_of(self, path: str) -> tuple[int, bool, bool]:
        """(num_features, affine, track_running_stats) of the BatchNorm at `path`: the case's
        `bn:` for a model of the table, the module's own for a user model."""
        if self.structure is not None:
            facts = self.structure.batchnorm(path)
            return facts.num_features, facts.affine, facts.track_running_stats
        bn = self.data["bn"]
        return bn["num_features"], bn.get("affine", True), bn.get("track_running_stats", True)

    def problem(self, path: PathKey, message: str, allowed: str | None = None) -> CaseProblem:
        return CaseProblem(self.document.line_of(path), format_path(path), message, allowed)

    def input_shape(self, raw_input: dict[str, Any] | None = None, at: PathKey = ("input",), own: Any = None) -> Iterator[CaseProblem]:
        """The input section against the model and num_features: the case's, or (`raw_input` at
        `at`) a step's, merged with the case's; a problem in a field the step inherits (`own`: the
        fields it sets) is reported at the step's input, where the mismatch was made."""
        raw = self.data["input"] if raw_input is None else raw_input

        def where(name: str, *rest: Any) -> PathKey:
            return (*at, name, *rest) if own is None or name in own else at

        shape = raw["shape"]
        if self.spec.user:  # the probe ran the model on the case's input: only the input's own fields remain
            yield from self._input_values(raw, shape, where)
            return
        num_features = self.data["bn"]["num_features"]
        if len(shape) not in self.spec.input_ranks:
            ranks = " or ".join(str(rank) for rank in self.spec.input_ranks)
            yield self.problem(where("shape"), f"rank {len(shape)} does not fit model {self.spec.name!r}", f"rank {ranks}")
            return
        sizes = (
            layer_sizes(self.spec.root, list(shape), num_features)
            if not self.spec.spatial_shrink or min(shape[2:]) > self.spec.spatial_shrink
            else ()
        )
        yield from input_size_problems(self.document, sizes, shape, where("shape"))
        if self.spec.keeps_channels and shape[1] != num_features:  # a bare BN, a depthwise conv, a residual addition
            yield self.problem(where("shape", 1), f"{shape[1]} channels but bn.num_features is {num_features}", str(num_features))
        shrink = self.spec.spatial_shrink
        if shrink and min(shape[2:]) <= shrink:
            yield self.problem(
                where("shape"), f"the model's convolutions shrink each spatial size by {shrink}", f"spatial sizes >= {shrink + 1}"
            )
        yield from self._input_values(raw, shape, where)

    def _input_values(self, raw: dict[str, Any], shape: list[int], where: Any) -> Iterator[CaseProblem]:
        """The input's per-channel vectors and literal values against its shape."""
        channels = shape[1]
        for name in ("channel_offset", "channel_scale"):
            values = raw.get(name)
            if values is not None and len(values) != channels:
                yield self.problem(where(name), f"{len(values)} values for {channels} channels", f"{channels} values")
        for index, entry in enumerate(raw.get("constant_channels", [])):
            if entry["channel"] >= channels:
                yield self.problem(
                    where("constant_channels", index, "channel"), f"channel {entry['channel']} out of range", f"0..{channels - 1}"
                )
        values = raw.get("values")
        if values is not None:
            found = _nested_shape(values)
            if found != tuple(shape):
                yield self.problem(
                    where("values"), f"nested lists of shape {found or 'ragged/non-numeric'}", f"numbers of shape {tuple(shape)}"
                )

    def step_inputs(self, index: int, raw: Any) -> Iterator[CaseProblem]:
        """A forward's or train_step's own input, merged with the case's, checked as an input section."""
        kind = step_kind(raw)
        own = raw[kind].get("input") if isinstance(raw, dict) and isinstance(raw.get(kind), dict) else None
        if own is not None:
            at = ("steps", index, kind or "", "input")
            rank = len(self.data["input"]["shape"])
            if "shape" in own and isinstance(own["shape"], list) and len(own["shape"]) != rank:
                # every runner builds its model, and Keras its port, for the case's input rank
                yield self.problem((*at, "shape"), f"rank {len(own['shape'])} where the case's input has rank {rank}", f"rank {rank}")
                return
            yield from self.input_shape(merged_step_input(self.data["input"], own), at, own)

    def bn_vectors(self) -> Iterator[CaseProblem]:
        num_features = self.data["bn"]["num_features"]  # NaN and Inf: refused with the schema problems
        for name in ("weight", "bias", "running_mean", "running_var"):
            values = self.data["bn"].get(name)
            if values is not None and len(values) != num_features:
                yield self.problem(("bn", name), f"{len(values)} values for num_features={num_features}", f"{num_features} values")
        running_var = self.data["bn"].get("running_var") or []
        if any(value < 0 for value in running_var):
            yield self.problem(("bn", "running_var"), "a variance is negative", "values >= 0")

    def bn_by_path(self, refused: frozenset[str]) -> Iterator[CaseProblem]:
        """Each BatchNorm's own values: a BatchNorm of the model, vectors of num_features (an
        entry the schema refused is left to its message)."""
        paths = self.spec.batchnorm_paths
        known = ", ".join(repr(name) for name in paths)
        for path, values in self.data["bn_by_path"].items():
            where = ("bn_by_path", path)
            if refused_under(refused, format_path(where)) or not isinstance(values, dict):
                continue
            if path not in paths:
                yield self.problem(where, f"no BatchNorm {quoted(path)} in model {self.spec.name!r}", known)
                continue
            yield from self._batchnorm_tensors(where, path, values)

    def _batchnorm_tensors(self, where: PathKey, path: str, values: dict[str, Any]) -> Iterator[CaseProblem]:
        """Tensors given to the BatchNorm at `path` (bn_by_path, set_state): ones it holds, of its
        num_features, no negative variance; scalars (eps, momentum) pass."""
        num_features, affine, tracks = self.bn_of(path)
        for name, value in values.items():
            if name in ("weight", "bias") and not affine:
                yield self.problem((*where, name), "this BatchNorm has no weight or bias", self.needs("affine"))
            elif name in ("running_mean", "running_var") and not tracks:
                yield self.problem((*where, name), "this BatchNorm keeps no running statistics", self.needs("track_running_stats"))
            elif isinstance(value, list) and len(value) != num_features:
                yield self.problem((*where, name), f"{len(value)} values for num_features={num_features}", f"{num_features} values")
            elif name == "running_var" and any(item < 0 for item in value):
                yield self.problem((*where, name), "a variance is negative", "values >= 0")

    def state_steps(self, index: int, raw: Any) -> Iterator[CaseProblem]:
        """A set_state's or reset_running_stats's BatchNorm paths and tensors, against the model and bn."""
        kind = step_kind(raw)
        paths = self.spec.batchnorm_paths
        known = ", ".join(repr(name) for name in paths)
        if kind == "reset_running_stats":
            if not any(self.bn_of(path)[2] for path in paths):
                yield self.problem(("steps", index), "there are no running statistics to reset", self.needs("track_running_stats"))
            frozen = {facts.path for facts in self.structure.batchnorms if facts.frozen} if self.structure is not None else set()
            for position, path in enumerate(raw.get(kind) or [] if isinstance(raw, dict) else []):
                if path not in paths:
                    yield self.problem(("steps", index, kind, position), f"no BatchNorm {quoted(path)} in model {self.spec.name!r}", known)
                elif path in frozen:
                    yield self.problem(
                        ("steps", index, kind, position), f"{quoted(path)} is a frozen BatchNorm: it has no reset_running_stats()", known
                    )
            return
        if kind != "set_state" or not isinstance(raw, dict):
            return
        for path, tensors in raw[kind].items():
            where = ("steps", index, kind, path)
            if path not in paths:
                yield self.problem(where, f"no BatchNorm {quoted(path)} in model {self.spec.name!r}", known)
                continue
            yield from self._batchnorm_tensors(where, path, tensors)

    def mode_paths(self, path: PathKey, mode: Any) -> Iterator[CaseProblem]:
        if isinstance(mode, str):
            return
        known = ", ".join(repr(name) for name in self.spec.submodule_paths)
        for submodule in mode:
            if is_pattern(submodule):
                if not matching_paths(submodule, self.spec.submodule_paths):
                    yield self.problem(
                        (*path, submodule),
                        f"pattern {quoted(submodule)} matches no submodule of model {self.spec.name!r}",
                        f"a path or a pattern (* within a name, ** across names) over: {known}",
                    )
            elif submodule not in self.spec.submodule_paths:
                yield self.problem((*path, submodule), f"no submodule {quoted(submodule)} in model {self.spec.name!r}", known)

    def expectation(self, path: PathKey, raw: dict[str, Any], step_count: int | None, refused: frozenset[str]) -> Iterator[CaseProblem]:
        where = format_path(path)
        has_fields = "field" in raw or "fields" in raw
        if has_fields == ("status" in raw) or ("field" in raw and "fields" in raw):
            yield self.problem(path, "an expectation names either field / fields or status", "exactly one of them")
            return
        if "status" in raw and "step" in raw:
            yield self.problem((*path, "step"), "a status expectation has no step", "field / fields with step")
        if has_fields and not refused_under(refused, f"{where}.runners") and REFERENCE_RUNNER in raw.get("runners", ()):
            others = ", ".join(name for name in runner_names() if name != REFERENCE_RUNNER)
            yield self.problem(
                (*path, "runners"),
                f"{REFERENCE_RUNNER} is the reference every other runner is compared with",
                f"the runner(s) that differ from it: {others}",
            )
        if not refused_under(refused, f"{where}.field", f"{where}.fields"):
            fields = known_fields(self.spec)
            patterns = [raw["field"]] if "field" in raw else raw.get("fields", [])
            for index, pattern in enumerate(patterns):
                if not any(field_matches(pattern, name) for name in fields):
                    key = (*path, "field") if "field" in raw else (*path, "fields", index)
                    yield self.problem(key, f"{quoted(pattern)} matches no field of model {self.spec.name!r}", ", ".join(fields))
        steps = raw.get("step")
        if step_count is None or refused_under(refused, f"{where}.step"):
            return
        for step in [steps] if isinstance(steps, int) else steps or []:
            if step >= step_count:
                yield self.problem(
                    (*path, "step"), f"step {step} does not exist", f"0..{step_count - 1} (train_step repeats count one step each)"
                )


def _nested_shape(values: Any) -> tuple[int, ...] | None:
    if isinstance(values, bool):
        return None
    if isinstance(values, (int, float)):
        return ()
    if not isinstance(values, list) or not values:
        return None
    shapes = {_nested_shape(item) for item in values}
    inner = shapes.pop() if len(shapes) == 1 else None
    return None if inner is None else (len(values), *inner)


def build_case(document: LoadedDocument, case_id: str, source: str, directory: Path | None = None) -> Case:
    """The `Case` of a document that passed validation."""
    data = document.data
    user_model = structure = None
    if is_user_model(data["model"]):
        user_model = user_model_ref(data["model"], directory)
        structure = probe_structure(
            user_model, tuple(data["input"]["shape"]), data.get("bn", {}).get("dtype", "float32"), data.get("model_seed", 0)
        )
        # The case-wide configuration a user model's BatchNorms do not share: its first one's, for what reads one.
        bn = BNConfig(num_features=structure.batchnorms[0].num_features, dtype=data.get("bn", {}).get("dtype", "float32"))
        spec = structure.spec(user_model.display, len(data["input"]["shape"]))
    else:
        bn_fields: dict[str, Any] = {key: tuple(value) if isinstance(value, list) else value for key, value in data["bn"].items()}
        bn = BNConfig(**bn_fields)
        spec = model_spec(data["model"], data.get("model_options"))
    input_spec = build_input(data["input"], bn.dtype)
    paths = spec.submodule_paths
    mode = mode_setting(data.get("mode", "train"), paths, spec.batchnorm_paths if data.get("freeze_batchnorm") else ())
    return Case(
        case_id=case_id,
        path=source,
        description=" ".join(data["description"].split()),
        model=spec.name,
        bn=bn,
        mode=mode,
        input=input_spec,
        steps=tuple(expand_steps(data["steps"], data["input"], input_spec.dtype, paths)),
        model_seed=data.get("model_seed", 0),
        expectations=build_expectations(document),
        tolerance=build_tolerance(data),
        runners=tuple(data["runners"]) if "runners" in data else None,
        timeout_s=float(data["timeout"]) if "timeout" in data else None,
        keras=KerasOptions(**data.get("keras", {})),
        model_options=tuple(sorted(data.get("model_options", {}).items())),
        torch_memory_format=data.get("torch_memory_format", "contiguous"),
        bn_by_path=tuple(
            (path, tuple((name, tuple(value) if isinstance(value, list) else value) for name, value in values.items()))
            for path, values in data.get("bn_by_path", {}).items()
        ),
        user_model=user_model,
        structure=structure,
    )
