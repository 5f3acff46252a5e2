"""Test-only runners that report where, when and on how many threads they ran: the worker's pid
and its parent's, whether torch was loaded before the run, the start and end of their run on the
system-wide monotonic clock, and torch's thread count.
Registered by tests/test_execution.py, in the torch family or in a one-worker family of their own."""

from __future__ import annotations

import os
import sys
import time

from harness.core.case import Case
from harness.core.results import RunResult
from harness.run.runners.base import Runner

SLOW_S = 2.0


class QuickProbe(Runner):
    """Returns at once."""

    name = "probe-quick"
    seconds = 0.0

    def run(self, case: Case) -> RunResult:
        start, torch_loaded = time.monotonic(), "torch" in sys.modules
        time.sleep(self.seconds)
        import torch

        return RunResult(
            self.name,
            "ok",
            details={
                "pid": os.getpid(),
                "parent_pid": os.getppid(),
                "torch_loaded": torch_loaded,
                "start": start,
                "end": time.monotonic(),
                "torch_threads": torch.get_num_threads(),
            },
        )


class SlowProbe(QuickProbe):
    """Takes SLOW_S seconds, in the torch family."""

    name = "probe-slow"
    seconds = SLOW_S


class SoloSlowProbe(QuickProbe):
    """Takes SLOW_S seconds, in a family with one worker."""

    name = "probe-solo-slow"
    seconds = SLOW_S


PROBE_RUNNERS = {  # name -> (target, family)
    "probe-quick": ("tests.probe_runners:QuickProbe", "torch-onnx"),
    "probe-slow": ("tests.probe_runners:SlowProbe", "torch-onnx"),
    "probe-solo-slow": ("tests.probe_runners:SoloSlowProbe", "probe-solo"),
}
