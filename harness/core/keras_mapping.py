"""How a PyTorch BatchNorm is ported to Keras 3, as data: each Keras parameter with its value and
where the value comes from. Recorded with every Keras result and named in its verdicts.

PyTorch: running = (1 - momentum) * running + momentum * batch_stat, running_var unbiased.
Keras 3: moving = moving * momentum + batch_stat * (1 - momentum), moving_var biased;
defaults momentum=0.99, epsilon=1e-3, axis=-1; batch statistics only when called with
training=True on a trainable layer (keras/src/layers/normalization/batch_normalization.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.case import Case

KERAS_DEFAULTS = {"momentum": 0.99, "epsilon": 1e-3, "axis": -1, "trainable": True}


class Unmappable(Exception):
    """The case uses a PyTorch feature Keras has no counterpart for."""


@dataclass(frozen=True, slots=True)
class MappedParameter:
    """One Keras parameter: its value, the mapped value, and where the value comes from."""

    name: str
    value: Any
    mapped: Any  # what the mapping from PyTorch gives
    source: str

    @property
    def deviates(self) -> bool:
        """Whether the value differs from the PyTorch mapping (a default or a case's override)."""
        return bool(self.value != self.mapped)

    def describe(self) -> str:
        """`momentum=0.1 (case override; mapped: 0.9)`."""
        text = f"{self.name}={self.value!r} ({self.source}"
        return text + (f"; mapped: {self.mapped!r})" if self.deviates else ")")


@dataclass(frozen=True, slots=True)
class KerasMapping:
    """Every parameter of the Keras port."""

    parameters: tuple[MappedParameter, ...]

    def value(self, name: str) -> Any:
        """The value the Keras port uses for `name`."""
        return next(parameter.value for parameter in self.parameters if parameter.name == name)

    def summary(self) -> str:
        """One line for verdicts: the parameters that deviate from the mapping first."""
        deviating = [parameter.describe() for parameter in self.parameters if parameter.deviates]
        if deviating:
            return "Keras parameters not mapped from PyTorch: " + "; ".join(deviating)
        return "Keras parameters all mapped from PyTorch: " + ", ".join(f"{p.name}={p.value!r}" for p in self.parameters)

    def to_json(self) -> list[dict[str, Any]]:
        """The mapping as results.json records it."""
        return [{"name": p.name, "value": p.value, "mapped": p.mapped, "source": p.source, "deviates": p.deviates} for p in self.parameters]


def channel_axis(case: Case) -> int:
    """The Keras axis that holds PyTorch's channels: -1 where the port feeds Keras channels-last
    data (convolutional models, as Conv2D on CPU wants; a bare BatchNorm with keras.layout:
    channels_last, the idiomatic Keras layout), else 1 (a bare BatchNorm keeps torch's NC...)."""
    return -1 if case.keras.channels_last(case.model_spec.is_bare_batchnorm) else 1


def keras_mapping(case: Case) -> KerasMapping:
    """The Keras port of `case`'s BatchNorm.

    Raises:
        Unmappable: with `parameters: mapped`, a PyTorch feature that has no Keras counterpart.
    """
    options, bn = case.keras, case.bn
    defaults = options.parameters == "framework-defaults"
    if not defaults and bn.momentum is None and options.momentum is None:
        raise Unmappable("momentum=None (a cumulative moving average) has no Keras counterpart")
    if not defaults and not bn.track_running_stats:
        raise Unmappable("Keras BatchNormalization always keeps moving statistics; track_running_stats=False has none")
    mapped = {
        "momentum": None if bn.momentum is None else 1.0 - bn.momentum,
        "epsilon": bn.eps,
        "axis": channel_axis(case),
        "trainable": True,
        "center": bn.affine,
        "scale": bn.affine,
        "training_argument": "explicit",
        "running_var": "unbiased",
    }
    how = {
        "momentum": f"1 - torch momentum {bn.momentum}",
        "epsilon": "torch eps",
        "axis": "the channel axis of the data Keras sees",
        "trainable": "a trainable layer, as torch's BN is",
        "center": "torch affine",
        "scale": "torch affine",
        "training_argument": "training= passed on every call, from the torch module's mode",
        "running_var": "moving_variance re-expressed in torch's unbiased convention",
    }
    parameters = []
    value: Any
    for name, mapped_value in mapped.items():
        override = getattr(options, name, None) if name not in ("training_argument", "running_var") else None
        if name == "training_argument":
            value, source = options.training_argument, "case" if options.training_argument != "explicit" else how[name]
        elif name == "running_var":
            value = options.running_var
            source = how[name] if value == "unbiased" else "moving_variance as Keras stores it (biased)"
        elif override is not None:
            value, source = override, "case override"
        elif defaults and name in KERAS_DEFAULTS:
            value, source = KERAS_DEFAULTS[name], "Keras default"
        else:
            value, source = mapped_value, how[name]
        parameters.append(MappedParameter(name, value, mapped_value, source))
    return KerasMapping(tuple(parameters))


def per_batchnorm(case: Case, mapping: KerasMapping) -> dict[str, dict[str, float]]:
    """The Keras momentum and epsilon of each BatchNorm with its own values (bn_by_path), where
    the mapping takes them from PyTorch (a case's keras override or a Keras default stays).

    Raises:
        Unmappable: a BatchNorm of its own momentum=None, mapped.
    """
    mapped = {parameter.name: not parameter.deviates for parameter in mapping.parameters}
    settings: dict[str, dict[str, float]] = {}
    for path, own in _own_values(case).items():
        layer: dict[str, float] = {}
        if own.get("frozen"):
            settings[path] = {"epsilon": own["eps"]} if mapped.get("epsilon") else {}
            continue  # always called in inference: its momentum is never used
        if not own.get("track_running_stats", True):
            raise Unmappable(f"the BatchNorm {path}: Keras BatchNormalization always keeps moving statistics; it keeps none")
        if "affine" in own and not own["affine"]:
            layer["center"] = layer["scale"] = False
        if "momentum" in own and mapped.get("momentum"):
            if own["momentum"] is None:
                raise Unmappable(f"the BatchNorm {path}: momentum=None (a cumulative moving average) has no Keras counterpart")
            layer["momentum"] = 1.0 - own["momentum"]
        if "eps" in own and mapped.get("epsilon"):
            layer["epsilon"] = own["eps"]
        if layer:
            settings[path] = layer
    return settings


def _own_values(case: Case) -> dict[str, dict[str, Any]]:
    """The values each BatchNorm has apart from the case's `bn:`: its `bn_by_path` entry, and for
    a user model what its own module holds (the probe's facts), the entry over them."""
    own: dict[str, dict[str, Any]] = {}
    if case.structure is not None:
        for facts in case.structure.batchnorms:
            values = {"eps": facts.eps, "momentum": facts.momentum, "affine": facts.affine}
            values |= {"track_running_stats": facts.track_running_stats, "frozen": facts.frozen}
            own[facts.path] = values
    for path, entry in case.bn_by_path:
        own.setdefault(path, {}).update(dict(entry))
    return own
