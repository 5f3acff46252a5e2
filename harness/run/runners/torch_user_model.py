"""A user's own torch model: import its factory, build it, find its BatchNorms, describe it.

Run as `python -m harness.run.runners.torch_user_model` this is the loader's structure probe: it
reads a model reference and an input (JSON) on stdin, builds the model once, runs one forward in
eval mode, and prints the structure (`harness.core.user_models.ModelStructure`, as JSON) on
stdout. The user's code thus runs first in a child process that the loader can time out and whose
crash is the case's error, never in the loader itself; the runners later build the model again,
in their own worker, from the same reference.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# torch's BatchNorm base class: BatchNorm1d/2d/3d, their lazy variants and SyncBatchNorm.
_BatchNorm = nn.modules.batchnorm._BatchNorm
_InstanceNorm = nn.modules.instancenorm._InstanceNorm


class UserModelError(Exception):
    """The user's factory cannot make a model: the case's error, with the user's traceback."""


def load_factory(ref: dict[str, Any]) -> Callable[..., Any]:
    """The callable a reference names: `file` imported by path (its folder on sys.path, for its
    own sibling imports), or `package.module:attribute` imported from the case's repository."""
    if ref.get("file"):
        path = Path(ref["file"])
        if str(path.parent) not in sys.path:  # its own sibling imports, as pytest puts a test's folder first
            sys.path.insert(0, str(path.parent))
        name = f"bn_harness_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None, f"{path} is no Python file"
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # before it runs: dataclasses and pickling look a module up by name
            spec.loader.exec_module(module)
        attribute = ref["factory"]
    else:
        if ref.get("repository") and ref["repository"] not in sys.path:
            sys.path.insert(0, ref["repository"])
        module_name, attribute = ref["factory"].split(":", 1)
        module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def build_user_model(ref: dict[str, Any], seed: int) -> nn.Module:
    """The model the factory makes, its parameters drawn after `torch.manual_seed(seed)`.

    Raises:
        UserModelError: importing, calling or checking the factory failed.
    """
    try:
        factory = load_factory(ref)
        torch.manual_seed(seed)
        model = factory(**ref.get("kwargs", {}))
    except Exception as error:
        raise UserModelError(_user_traceback(error)) from None
    if not isinstance(model, nn.Module):
        raise UserModelError(f"{ref['factory']}(...) returned {type(model).__name__}, not a torch.nn.Module")
    return model


def find_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """Every BatchNorm by path, in named_modules order: torch's (BatchNorm1d/2d/3d, the lazy ones,
    SyncBatchNorm), and any other module holding running_mean and running_var buffers but no
    children (a frozen BatchNorm, as detection code writes), InstanceNorm left out."""
    found = {}
    for path, module in model.named_modules():
        if isinstance(module, _BatchNorm) or (is_frozen_batchnorm(module) and not isinstance(module, _InstanceNorm)):
            found[path] = module
    return found


def is_frozen_batchnorm(module: nn.Module) -> bool:
    """A module of its own with running statistics that is no torch BatchNorm."""
    buffers = dict(module.named_buffers(recurse=False))
    return (
        not isinstance(module, nn.modules.batchnorm._NormBase)
        and "running_mean" in buffers
        and "running_var" in buffers
        and not any(True for _ in module.children())
    )


def materialize(model: nn.Module, example: torch.Tensor) -> None:
    """Give lazy modules (LazyBatchNorm2d, LazyConv2d, ...) their shapes with one forward in eval
    mode, which updates no statistics; every module's flag is then as it was."""
    from torch.nn.modules.lazy import LazyModuleMixin

    if not any(isinstance(module, LazyModuleMixin) and module.has_uninitialized_params() for module in model.modules()):
        return
    flags = {module: module.training for module in model.modules()}
    model.eval()
    with torch.no_grad():
        model(example)
    for module, training in flags.items():
        module.training = training


def batchnorm_facts(path: str, module: nn.Module) -> dict[str, Any]:
    """One BatchNorm's configuration as its module holds it."""
    frozen = not isinstance(module, _BatchNorm)
    return {
        "path": path,
        "class_name": type(module).__name__,
        "num_features": int(module.running_mean.numel()) if module.running_mean is not None else int(module.num_features),
        "eps": float(getattr(module, "eps", 1e-5)),
        "momentum": None if frozen else module.momentum,
        "affine": getattr(module, "weight", None) is not None,
        "track_running_stats": module.running_mean is not None,
        "frozen": frozen,
    }


# What the Keras port needs of each module it maps (its constructor's arguments).
_LEAF_FACTS: dict[type, tuple[str, ...]] = {
    nn.Conv1d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    nn.Conv3d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    nn.Linear: ("in_features", "out_features"),
    nn.MaxPool1d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.AvgPool1d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AdaptiveAvgPool1d: ("output_size",),
    nn.AdaptiveAvgPool2d: ("output_size",),
    nn.Flatten: ("start_dim", "end_dim"),
    nn.Hardtanh: ("min_val", "max_val"),
    nn.LeakyReLU: ("negative_slope",),
}


def leaf_facts(model: nn.Module) -> list[tuple[str, dict[str, Any]]]:
    """(path, facts) of every module whose constructor arguments the Keras port reads."""
    found = []
    for path, module in model.named_modules():
        names = _LEAF_FACTS.get(type(module))
        if names is not None:
            facts = {name: _plain(getattr(module, name)) for name in names}
            facts["bias"] = getattr(module, "bias", None) is not None
            found.append((path, facts))
    return found


def traced_graph(model: nn.Module) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The model's forward as torch.fx traces it, each node as plain data (its arguments: other
    nodes as {"node": name}, constants as they are), or None and why it cannot be traced."""
    batchnorms = set(find_batchnorms(model).values())

    class Tracer(torch.fx.Tracer):
        """Every BatchNorm a leaf (a frozen one's forward is plain tensor code fx would trace into)."""

        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return module in batchnorms or super().is_leaf_module(module, qualified_name)

    try:
        graph = Tracer().trace(model)
    except Exception as error:  # fx's own errors: control flow on values, untraceable calls
        return None, f"torch.fx cannot trace it ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    nodes = []
    for node in graph.nodes:
        nodes.append(
            {"name": node.name, "op": node.op, "target": _target(node), "args": _plain(node.args), "kwargs": _plain(dict(node.kwargs))}
        )
    return nodes, None


def _target(node: Any) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module.startswith("torch._C") or module == "torch._tensor":  # torch.relu, torch.flatten: the public name
        module = "torch"
    return f"{module}.{name}" if module else name


def _plain(value: Any) -> Any:
    """JSON-able data: an fx node as {"node": name}, tuples as lists, other objects as text."""
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe(model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """The structure of a built model (ModelStructure's JSON), after one forward in eval mode
    (counting each BatchNorm's calls) and one in train mode on a copy.

    Raises:
        UserModelError: a forward returns no single tensor, a BatchNorm runs more than once per
            forward, or a module that is no torch BatchNorm updates running statistics.
    """
    materialize(model, example)
    model.eval()
    found = find_batchnorms(model)
    calls = dict.fromkeys(found, 0)
    hooks = [
        module.register_forward_pre_hook(lambda *_, path=path: calls.__setitem__(path, calls[path] + 1)) for path, module in found.items()
    ]
    with torch.no_grad():
        output = model(example)
    for hook in hooks:
        hook.remove()
    if not isinstance(output, torch.Tensor):
        raise UserModelError(f"the model returns {type(output).__name__}; the harness compares models that return one tensor")
    twice = [f"{path} ({count} calls)" for path, count in calls.items() if count > 1]
    if twice:
        raise UserModelError(
            f"a BatchNorm runs more than once in one forward: {', '.join(twice)}; "
            "the harness judges each BatchNorm by its one call per step"
        )
    _check_train_forward(model, example, {path for path, module in found.items() if is_frozen_batchnorm(module)})
    graph, untraceable = traced_graph(model)
    return {
        "modules": [[path, type(module).__name__] for path, module in model.named_modules()],
        "batchnorms": [batchnorm_facts(path, module) for path, module in found.items()],
        "output_shape": list(output.shape),
        "graph": graph,
        "untraceable": untraceable,
        "leaf_modules": leaf_facts(model),
    }


def _check_train_forward(model: nn.Module, example: torch.Tensor, frozen: set[str]) -> None:
    """A train-mode forward on a copy: it must return one tensor too, and a module taken for a
    frozen BatchNorm must leave its statistics alone. A copy that cannot run in train mode (one
    value per channel) says nothing: the case may be about exactly that."""
    twin = copy.deepcopy(model).train()
    before = {path: twin.get_submodule(path).running_mean.clone() for path in frozen}
    try:
        with torch.no_grad():
            output = twin(example)
    except Exception:  # the runners meet the same error as a result
        return
    if not isinstance(output, torch.Tensor):
        raise UserModelError(f"in train mode the model returns {type(output).__name__}; the harness compares models that return one tensor")
    moved = [path for path in frozen if not torch.equal(before[path], twin.get_submodule(path).running_mean)]
    if moved:
        raise UserModelError(
            f"{', '.join(moved)}: no torch BatchNorm, yet its forward in train mode updates running_mean; the harness knows "
            "the semantics of torch's BatchNorms and of frozen ones (statistics never updated), not this module's"
        )


def _user_traceback(error: BaseException) -> str:
    """The error with the user's frames only: a traceback caught here starts in this folder's
    code (the builder; a repro script's own), whose frames are noise to the user."""
    here = str(Path(__file__).resolve().parent) + "/"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__) if not frame.filename.startswith(here)]
    lines = traceback.format_list(frames[-6:])
    return "".join(lines) + f"{type(error).__name__}: {error}"


def main() -> None:
    """The probe: reference and input on stdin, structure (or the error) on stdout."""
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(1)
    reply_to, sys.stdout = sys.stdout, sys.stderr  # what the user's code prints must not garble the reply
    try:
        model = build_user_model(request["model"], request["seed"])
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}[request["dtype"]]
        example = torch.randn(*request["shape"], generator=torch.Generator().manual_seed(0)).to(dtype)
        try:
            structure = describe(model.to(dtype), example)
        except UserModelError:
            raise
        except Exception as error:
            shape = "x".join(map(str, request["shape"]))
            raise UserModelError(f"a forward of a {shape} {request['dtype']} input failed:\n{_user_traceback(error)}") from None
        reply: dict[str, Any] = {"structure": structure}
    except UserModelError as error:
        reply = {"error": str(error)}
    reply_to.write(json.dumps(reply))


if __name__ == "__main__":
    main()
