"""`keras-tensorflow`, `keras-jax`, `keras-torch`, `keras-numpy`: the case's model ported to Keras 3
with the mapping of `harness.keras_mapping`, run in one worker process per backend.

The workers live as long as the run (the backend is imported once, not once per case). A worker
that dies makes its case `crashed` and is replaced for the next case.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ClassVar

from harness.case import Case
from harness.keras_mapping import Unmappable, keras_mapping
from harness.results import RunResult
from harness.runners.base import FrameworkMissing, Runner, import_framework, skipped

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
OUTPUT_TAIL_CHARS = 2000
_workers: dict[str, ProcessPoolExecutor] = {}
_worker_output: dict[str, str] = {}  # backend -> the file its worker prints to


def worker_for(backend: str) -> ProcessPoolExecutor:
    """The backend's worker process, started on first use."""
    if backend not in _workers:
        from harness.runners.keras_worker import prepare_worker

        with tempfile.NamedTemporaryFile(prefix=f"bn-harness-keras-{backend}-", suffix=".log", delete=False) as output:
            _worker_output[backend] = output.name
        _workers[backend] = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=prepare_worker,
            initargs=(backend, output.name),
        )
    return _workers[backend]


def worker_output_tail(backend: str) -> str:
    """The end of what the backend's worker printed."""
    try:
        with open(_worker_output[backend], errors="replace") as output:
            return output.read()[-OUTPUT_TAIL_CHARS:]
    except (KeyError, OSError):
        return ""


@atexit.register
def stop_workers() -> None:
    """Shut every worker down (also called at interpreter exit)."""
    for worker in _workers.values():
        worker.shutdown(wait=True, cancel_futures=True)
    _workers.clear()
    for path in _worker_output.values():
        with contextlib.suppress(OSError):
            os.unlink(path)
    _worker_output.clear()


class KerasRunner(Runner):
    """Keras 3 on one backend."""

    backend: ClassVar[str]

    def run(self, case: Case) -> RunResult:
        for module in ("keras", *BACKEND_MODULES[self.backend]):
            if importlib.util.find_spec(module) is None:
                needed_by = "" if module in ("keras", self.backend) else f" (Keras's {self.backend} backend imports it)"
                return skipped(self.name, f"{module} is not installed{needed_by}; install it with: {INSTALL_HINTS[module]}")
        try:
            mapping = keras_mapping(case)
        except Unmappable as reason:
            return skipped(self.name, f"no Keras port: {reason}")
        try:
            weights = _torch_weights(case)
        except FrameworkMissing as missing:
            return skipped(self.name, f"the port copies the torch model's weights: {missing}")
        from harness.runners.keras_worker import run_case_in_worker

        worker = worker_for(self.backend)
        future = worker.submit(run_case_in_worker, self.name, self.backend, case, mapping, weights)
        try:
            return future.result()
        except BrokenProcessPool as error:
            # Retire the broken worker; the next case starts a fresh one.
            if _workers.get(self.backend) is worker:
                del _workers[self.backend]
            worker.shutdown(wait=False, cancel_futures=True)
            tail = worker_output_tail(self.backend)
            return RunResult(self.name, "crashed", f"the {self.backend} worker process died: {error}",
                             details={"worker_output_tail": tail})


@functools.lru_cache(maxsize=2)
def _torch_weights(case: Case) -> dict:
    """The torch model's initial weights, built once per case for all four backends (read-only)."""
    import_framework("torch", INSTALL_HINTS["torch"])
    from harness.runners.torch_models import build_model, to_numpy

    return {name: to_numpy(tensor) for name, tensor in build_model(case).state_dict().items()}


class KerasTensorFlowRunner(KerasRunner):
    name = "keras-tensorflow"
    backend = "tensorflow"


class KerasJaxRunner(KerasRunner):
    name = "keras-jax"
    backend = "jax"


class KerasTorchRunner(KerasRunner):
    name = "keras-torch"
    backend = "torch"


class KerasNumpyRunner(KerasRunner):
    name = "keras-numpy"
    backend = "numpy"
