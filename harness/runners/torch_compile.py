"""`torch-compile`: the model as `torch.compile` (inductor, the default backend) runs it, against
eager. Compiled code updates the module's buffers through a functionalised graph; a mode change
(`model.eval()`) recompiles on the guard on `training`.

It runs in its own worker (family `torch-compile`): inductor keeps process-wide state (its
caches, its compile workers), and its first compilation in a process costs tens of seconds.
"""

from __future__ import annotations

from harness.case import Case
from harness.results import RunResult
from harness.runners.base import FrameworkMissing, ObservationLog, Runner, import_framework, skipped, version_of
from harness.runners.torch_eager import TORCH_INSTALL_HINT


class TorchCompileRunner(Runner):
    """Runs each step through `torch.compile(model)`; an export step changes nothing."""

    name = "torch-compile"
    backend = "inductor"

    def run(self, case: Case) -> RunResult:
        try:
            torch = import_framework("torch", TORCH_INSTALL_HINT)
        except FrameworkMissing as missing:
            return skipped(self.name, str(missing))
        from harness.runners.torch_steps import Lane, run_steps

        torch._dynamo.reset()  # each case compiles afresh, as in the user's own process
        log = ObservationLog(self.name)
        log.details["versions"] = {"torch": version_of(torch)}
        log.details["compile"] = {"backend": self.backend}
        return run_steps(case, [Lane(log)], compile_model=lambda model: torch.compile(model, backend=self.backend))[0]
