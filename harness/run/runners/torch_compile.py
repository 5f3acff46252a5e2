"""`torch-compile`: the model as `torch.compile` (inductor, the default backend) runs it, against
eager. Compiled code updates the module's buffers through a functionalised graph; a mode change
(`model.eval()`) recompiles on the guard on `training`.

It runs in its own worker (family `torch-compile`): inductor keeps process-wide state (its
caches, its compile workers), and its first compilation in a process costs tens of seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from harness.run.runners.base import ObservationLog
from harness.run.runners.torch_eager import TorchEagerRunner


class TorchCompileRunner(TorchEagerRunner):
    """Runs each step through `torch.compile(model)`; an export step changes nothing."""

    backend = "inductor"

    def compiler(self, torch: ModuleType, log: ObservationLog) -> Callable[[Any], Callable]:
        torch._dynamo.reset()  # each case compiles afresh, as in the user's own process
        log.details["compile"] = {"backend": self.backend}
        return lambda model: torch.compile(model, backend=self.backend)
