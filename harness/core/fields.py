"""Names of the observed fields: one vocabulary for the runners that fill them and the cases
that expect divergences in them.

Two namespaces:
- the deployed artifact, what a user ships (the torch module in torch-eager, the ONNX graph in
  onnxruntime after an export): `output`, `<bn>.uses_batch_stats`, `<bn>.running_mean`,
  `<bn>.running_var`;
- `module.*`, the user's own torch module inside that runner, which an export may have changed:
  `module.output`, `module.<path>.training`, `module.<bn>.running_mean`, ...
"""

from __future__ import annotations

import fnmatch

from harness.core.models import ModelSpec

OUTPUT = "output"
MODULE = "module"
DEPLOYED_BN_ATTRIBUTES = ("uses_batch_stats", "running_mean", "running_var")
MODULE_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
MODULE_BN_ATTRIBUTES = ("eps", "momentum", "affine", "track_running_stats")
# A graph case's fields: the BatchNormalization node's outputs by position (opsets 6-13 name five
# in training: Y, running mean and var, saved mean and var).
GRAPH_OUTPUT_FIELDS = ("output", "running_mean", "running_var", "saved_mean", "saved_var")


def join(*parts: str) -> str:
    """Dot-join the non-empty parts: `join("module", "", "training")` -> `module.training`."""
    return ".".join(part for part in parts if part)


def deployed_field(bn_path: str, attribute: str) -> str:
    """A field of the deployed artifact's BatchNorm at `bn_path`."""
    return join(bn_path, attribute)


def module_field(path: str, attribute: str) -> str:
    """A field of the user's torch module at submodule `path`."""
    return join(MODULE, path, attribute)


def known_fields(spec: ModelSpec) -> tuple[str, ...]:
    """Every field a runner can report for a model."""
    names = [OUTPUT, module_field("", OUTPUT)]
    for path in spec.submodule_paths:
        names.append(module_field(path, "training"))
    for bn_path in spec.batchnorm_paths:
        names += [deployed_field(bn_path, attribute) for attribute in DEPLOYED_BN_ATTRIBUTES]
        if bn_path:  # a bare BatchNorm's output is `output` itself
            names.append(deployed_field(bn_path, OUTPUT))
        names += [module_field(bn_path, name) for name in MODULE_BN_BUFFERS + MODULE_BN_ATTRIBUTES]
    return tuple(names)


def field_matches(pattern: str, field: str) -> bool:
    """Shell-style match (`module.*.training`); brackets are literal, not character classes."""
    return fnmatch.fnmatchcase(field, pattern.replace("[", "[[]"))
