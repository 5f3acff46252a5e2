"""The registry of model builders a case may name: what each one is, without importing torch.

The torch code that builds them lives in `harness.run.runners.torch_models`; this module only
describes them, so that a case can be validated (submodule paths, input rank) before any
framework is imported.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a registered model looks like from outside: its submodules and the inputs it takes."""

    name: str
    summary: str
    submodule_paths: tuple[str, ...]  # every module path, "" being the model itself
    batchnorm_paths: tuple[str, ...]
    input_ranks: tuple[int, ...]
    channels_must_equal_num_features: bool


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("batchnorm1d", "a bare torch.nn.BatchNorm1d", ("",), ("",), (2, 3), True),
        ModelSpec("batchnorm2d", "a bare torch.nn.BatchNorm2d", ("",), ("",), (4,), True),
        ModelSpec("batchnorm3d", "a bare torch.nn.BatchNorm3d", ("",), ("",), (5,), True),
        ModelSpec("conv_bn", "Conv2d(k=3) -> BatchNorm2d", ("", "conv", "bn"), ("bn",), (4,), False),
        ModelSpec(
            "forum_net",
            "the forum thread's net: conv1(k=3, no bias) -> bn -> relu -> flatten -> fc1(10, no bias)",
            ("", "conv1", "bn", "fc1"),
            ("bn",),
            (4,),
            False,
        ),
        ModelSpec(
            "nested_two_bn",
            "two BatchNorm2d children at different depths: stem.{conv,bn} -> head.block.{conv,bn}",
            ("", "stem", "stem.conv", "stem.bn", "head", "head.block", "head.block.conv", "head.block.bn"),
            ("stem.bn", "head.block.bn"),
            (4,),
            False,
        ),
    )
}
