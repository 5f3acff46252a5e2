"""`keras-tensorflow`, `keras-jax`, `keras-torch`, `keras-numpy`: the case's model ported to Keras 3
with the mapping of `harness.core.keras_mapping`.

Each runs in its own family's worker process (harness.run.execution), whose initializer set
KERAS_BACKEND before anything imported keras; the torch weights the port copies are built in the
torch family's worker and handed over.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from harness.core.case import Case
from harness.core.keras_mapping import Unmappable, keras_mapping, per_batchnorm
from harness.core.keras_port_table import first_unportable
from harness.core.results import RunResult
from harness.run.runners.base import FrameworkMissing, Runner, import_framework, skipped
from harness.run.runners.keras_worker import run_case_in_worker

# What each backend imports (Keras's numpy backend uses jax.lax and scipy), and how to get it.
BACKEND_MODULES = {
    "tensorflow": ("tensorflow",),
    "jax": ("jax",),
    "torch": ("torch",),
    "numpy": ("jax", "scipy"),
}
INSTALL_HINTS = {
    "tensorflow": "pip install tensorflow-cpu==2.21.*",
    "jax": "pip install jax==0.10.2",
    "scipy": "pip install jax==0.10.2",
    "torch": "pip install torch==2.13.0",
    "keras": "pip install keras",
}


class KerasRunner(Runner):
    """Keras 3 on its record's backend."""

    @property
    def backend(self) -> str:
        assert self.record.keras_backend is not None, f"{self.name}: a Keras runner's record names its backend"
        return self.record.keras_backend

    def run(self, case: Case, torch_weights: dict[str, Any] | None = None) -> RunResult:
        # First: no install makes this backend fit.
        if case.keras.train_with == "fit" and self.backend == "numpy":
            return skipped(
                self.name, "Keras's numpy backend cannot train: its Model.fit raises NotImplementedError (keras.train_with: fit)"
            )
        for module in ("keras", *BACKEND_MODULES[self.backend]):
            if importlib.util.find_spec(module) is None:
                needed_by = "" if module in ("keras", self.backend) else f" (Keras's {self.backend} backend imports it)"
                return skipped(self.name, f"{module} is not installed{needed_by}; install it with: {INSTALL_HINTS[module]}")
        if case.structure is not None:
            unportable = first_unportable(case.structure)
            if unportable is not None:
                return skipped(self.name, f"no Keras port: {unportable}")
        try:
            mapping = keras_mapping(case)
            per_batchnorm(case, mapping)  # a BatchNorm of its own momentum=None has no port either
        except Unmappable as reason:
            return skipped(self.name, f"no Keras port: {reason}")
        if torch_weights is None:  # called outside the executor
            torch_weights = build_torch_weights(case)
            if isinstance(torch_weights, RunResult):
                return skipped(self.name, f"the port copies the torch model's weights: {torch_weights.reason}")
        if os.environ.get("KERAS_BACKEND", "tensorflow") != self.backend:
            raise RuntimeError(
                f"{self.name} runs in a process whose KERAS_BACKEND is {self.backend} "
                "(harness.run.execution's worker for it), not in this one"
            )

        return run_case_in_worker(self.name, self.backend, case, mapping, torch_weights)


def build_torch_weights(case: Case) -> dict[str, Any] | RunResult:
    """The torch model's initial weights as float64 arrays (the executor runs this in the torch
    family's worker), or a skipped result when torch is missing."""
    try:
        import_framework("torch", INSTALL_HINTS["torch"])
    except FrameworkMissing as missing:
        return skipped("torch-weights", str(missing))
    from harness.run.runners.torch_models import build_model, to_numpy

    return {name: to_numpy(tensor) for name, tensor in build_model(case).state_dict().items()}
