"""Where runners run: worker processes, one pool per framework family (torch + onnxruntime; each
Keras backend; torch.compile), kept alive across cases so that each framework is imported once
per worker.

A worker that dies (segfault, abort, out of memory) makes that runner's result `crashed`, with
the signal and the tail of what the worker printed; a runner that takes longer than its timeout
is `timed_out`. Either way pebble replaces the worker and the run goes on.

`jobs` bounds how many runners compute at once, across families (a semaphore around each call
into a worker), and how many torch + onnxruntime workers start; the other families have one
worker each. Each family has its own dispatch threads, so that a family whose only worker is busy
never holds up another family's work. Every worker computes on one thread, so that `jobs` is the
number of cores a run uses and no result depends on it. The workers of the families that use torch
fork from a server that has imported torch and the exporter once; the others spawn.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pebble

from harness.core.case import Case, GraphCase
from harness.core.errors import HarnessError
from harness.core.results import RunResult
from harness.core.runner_table import TORCH_FAMILY, RunnerRecord, family_record, runner_family, runner_record, shared_walks
from harness.run.runners import instantiate, resolve
from harness.run.runners.keras import build_torch_weights

# One compute thread per worker, set before any framework is imported (a value already in the
# environment wins): `jobs` is then the number of cores a run uses, no result depends on it, and
# idle threads spinning in one worker do not slow another (torch's OpenMP threads did: a fifth
# more CPU time with two workers). onnxruntime's sessions are set alike (`open_executor`).
ONE_THREAD_ENVIRONMENT = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
# The workers of the families that use torch (runner table: forks_from_server) fork from a server
# that imported these once, on one thread (harness.run.fork_server), instead of each spawned worker
# importing them itself: 2.8 s per worker, paid again by a second torch worker and by each worker
# that replaces a crashed or hung one. Not onnxruntime: its import starts a native thread, which a
# fork does not copy. Not Keras: a worker sets KERAS_BACKEND before its own import.
FORK_SERVER_MODULES = ("torch", "onnx", "onnxscript", "torch._dynamo", "onnxscript.function_libs.torch_lib.ops")
DEFAULT_TIMEOUT_S = 300.0  # per runner and case: a fresh worker's imports and a dynamo export fit well within it
OUTPUT_TAIL_CHARS = 2000


def prepare_worker(family: str, output_directory: str) -> None:
    """Pool initializer: set what must be set before a framework is imported (Keras reads
    KERAS_BACKEND once; the thread counts), and send what the frameworks print (C++ logs
    included) to a file per worker process, whose tail a crash reports."""
    backend = family_record(family).keras_backend
    if backend is not None:
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    compute_on_one_thread()
    output = os.open(os.path.join(output_directory, f"{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.close(output)


def compute_on_one_thread() -> None:
    """Set ONE_THREAD_ENVIRONMENT in this process, where not set already; before any framework import."""
    for variable, value in ONE_THREAD_ENVIRONMENT.items():
        os.environ.setdefault(variable, value)


def import_quietly(modules: Sequence[str]) -> None:
    """In a worker: import what its runners will need (a missing one is their skip reason, later)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the runner that needs it reports why
            pass


def execute_runner(record: RunnerRecord, case: Case | GraphCase, inputs: dict[str, Any]) -> RunResult:
    """In a worker: instantiate the runner its record names and run the case."""
    return instantiate(record).run(case, **inputs)


def execute_shared_walk(target: str, case: Case, names: tuple[str, ...]) -> tuple[RunResult, ...]:
    """In a worker: run the runners `names` on one walk with the function `module:function`."""
    return resolve(target)(case, names)


class Executor:
    """Runs runners in their families' worker pools, at most `jobs` at once."""

    def __init__(self, jobs: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1; got {jobs}")
        if timeout_s <= 0:
            raise ValueError(f"the timeout must be positive; got {timeout_s}")
        self.jobs, self.timeout_s = jobs, timeout_s
        self._pools: dict[str, pebble.ProcessPool] = {}
        self._dispatchers: dict[str, ThreadPoolExecutor] = {}
        self._slots = ArrivalOrderSlots(jobs)  # runners computing at once, all families together
        self._lock = threading.Lock()
        self._output_directory = tempfile.mkdtemp(prefix="bn-harness-workers-")
        self._weights: dict[Case, Future] = {}
        self._pending: collections.Counter[str] = collections.Counter()  # submitted, unfinished work per family
        self._sealed = False
        self._closed = False
        self._scheduled: set[Future] = set()  # the workers' futures not yet resolved, cancelled by close()

    def warm(self, names: Sequence[str]) -> None:
        """Start the workers of these runners' families now, importing their frameworks, so that
        the families' imports overlap instead of coming one after another at their first case."""
        families = list(dict.fromkeys(runner_family(name) for name in names))
        forked = [family for family in families if _forks_from_server(family)]
        if forked:
            _fork_server()
            multiprocessing.forkserver.ensure_running()  # its imports start now, beside the spawned workers'
        # The spawned families first: the first fork waits for the server's imports.
        for family in [family for family in families if family not in forked] + forked:
            modules = family_record(family).warms
            for _ in range(self._workers_of(family)):
                self._pool(family).schedule(import_quietly, args=(modules,))

    def submit(self, case: Case | GraphCase, names: Sequence[str]) -> list[Future]:
        """Schedule each runner of `names` on `case`; each future gives its RunResult. Runners that
        share an exporter (the runner table's `shared_walks`) run as one walk, exporting once."""
        futures: dict[str, Future] = {}
        for members, target in shared_walks(names):
            family = runner_family(members[0])
            if target is None or not isinstance(case, Case):
                futures.update({name: self._dispatch(family, case, self._run_one, name, case) for name in members})
                continue
            walk = self._dispatch(family, case, self._run_shared_walk, target, members, case)
            futures.update({name: _member_of(walk, index) for index, name in enumerate(members)})
        return [futures[name] for name in names]

    def seal(self) -> None:
        """No more work is coming: each family's workers stop as soon as the family has nothing
        left to run, which gives their memory back while the others still run. A later `submit`
        starts a retired family afresh."""
        with self._lock:
            self._sealed = True
            idle = [self._retire(family) for family in list(self._pools) if not self._pending[family]]
        _stop(idle)

    def run(self, case: Case | GraphCase, names: Sequence[str]) -> tuple[RunResult, ...]:
        """Every runner's result for `case`, in the order of `names`."""
        try:
            return tuple(future.result() for future in self.submit(case, names))
        finally:
            self.forget(case)

    def forget(self, case: Case | GraphCase) -> None:
        """Drop what was kept for `case` (the torch weights its Keras runners share)."""
        with self._lock:
            self._weights.pop(case, None)  # type: ignore[arg-type]

    def timeout_for(self, case: Case | GraphCase) -> float:
        """The case's own timeout, else the executor's (the command line's, else the default)."""
        return getattr(case, "timeout_s", None) or self.timeout_s

    def _dispatch(self, family: str, case: Case | GraphCase, function: Callable, *args: Any) -> Future:
        """Run `function(*args)` on one of the family's dispatch threads; count it as the family's
        pending work (and the torch family's, which builds a Keras runner's weights) until done."""
        families = (family, TORCH_FAMILY) if _ports_torch_weights(family, case) else (family,)
        with self._lock:
            if self._closed:
                raise HarnessError("the run was stopped")
            self._pending.update(families)
            if family not in self._dispatchers:
                self._dispatchers[family] = ThreadPoolExecutor(
                    max_workers=self._workers_of(family), thread_name_prefix=f"bn-harness-{family}"
                )
            future = self._dispatchers[family].submit(function, *args)
        future.add_done_callback(lambda _: self._finished(families))
        return future

    def _finished(self, families: tuple[str, ...]) -> None:
        with self._lock:
            self._pending.subtract(families)
            idle = [self._retire(family) for family in families if self._sealed and not self._pending[family]]
        _stop(idle)

    def _retire(self, family: str) -> pebble.ProcessPool | None:
        """Forget a family's pool and dispatch threads (called with the lock held, the family
        having nothing pending); the pool is the caller's to stop."""
        dispatcher = self._dispatchers.pop(family, None)
        if dispatcher is not None:
            dispatcher.shutdown(wait=False)
        return self._pools.pop(family, None)

    def _run_one(self, name: str, case: Case | GraphCase) -> RunResult:

        family = runner_family(name)
        inputs: dict[str, Any] = {}
        if _ports_torch_weights(family, case):
            weights = self._torch_weights(case)
            if isinstance(weights, RunResult):  # building the torch model failed: say so as this runner
                return RunResult(
                    name, weights.status, f"building the torch weights for the Keras port: {weights.reason}", details=weights.details
                )
            inputs["torch_weights"] = weights
        return self._call(name, family, execute_runner, (runner_record(name), case, inputs), self.timeout_for(case))

    def _run_shared_walk(self, target: str, names: tuple[str, ...], case: Case) -> tuple[RunResult, ...]:

        family = runner_family(names[0])
        outcome = self._call(" + ".join(names), family, execute_shared_walk, (target, case, names), self.timeout_for(case))
        if isinstance(outcome, RunResult):
            # The shared worker crashed or timed out: run each alone, so that the fault is the
            # result of the runner that made it and the others keep theirs.
            return tuple(self._run_one(name, case) for name in names)
        return outcome

    def _torch_weights(self, case: Case) -> dict[str, Any] | RunResult:
        """The torch model's initial weights, built once per case (whichever Keras runner asks
        first builds them in the torch family's worker; the others wait for that)."""

        with self._lock:
            future = self._weights.get(case)
            builds = future is None
            if builds:
                future = self._weights[case] = Future()
        if builds:
            try:
                future.set_result(self._call("torch-weights", "torch-onnx", build_torch_weights, (case,), self.timeout_for(case)))
            except BaseException as error:  # the runners waiting on these weights must not wait forever
                future.set_exception(error)
                raise
        return future.result()

    def _call(self, name: str, family: str, function, args: tuple, timeout_s: float) -> Any:
        with self._slots:  # held while the worker computes: at most `jobs` runners at once
            try:
                with self._lock:  # scheduled and registered at once: close() cancels every future it ran
                    future = self._pool_locked(family).schedule(function, args=args, timeout=timeout_s)
                    self._scheduled.add(future)
                future.add_done_callback(self._scheduled.discard)
                return future.result()
            except FutureTimeout:
                return RunResult(name, "timed_out", f"no result within {timeout_s:g} s; the {family} worker was stopped and replaced")
            except pebble.ProcessExpired as expired:
                tail = self._output_tail(expired.pid)
                return RunResult(
                    name,
                    "crashed",
                    f"the {family} worker process died: {_describe_exit(expired.exitcode)}"
                    + (f"; its last output:\n{_last_lines(tail)}" if tail.strip() else ""),
                    details={"exitcode": expired.exitcode, "worker_output_tail": tail},
                )
            except HarnessError as error:  # what the case asks cannot be done (a backend test that is not there)
                return RunResult(name, "run_failed", str(error), details={"harness_error": type(error).__name__})
            except Exception as error:  # a harness bug inside the worker: this runner's result, not the run's end
                import traceback

                text = "".join(traceback.format_exception(error))
                return RunResult(
                    name,
                    "crashed",
                    f"{type(error).__name__} in the {family} worker: {error}",
                    details={"traceback": text[-OUTPUT_TAIL_CHARS:]},
                )

    def _workers_of(self, family: str) -> int:
        """How many workers a family may start: `jobs` for torch and onnxruntime, which do most of
        the work; one per Keras backend, whose runs are short and whose workers are the largest;
        one for torch.compile, whose first compilation in a process is its largest cost."""
        return self.jobs if family == "torch-onnx" else 1

    def _pool(self, family: str) -> pebble.ProcessPool:
        with self._lock:
            return self._pool_locked(family)

    def _pool_locked(self, family: str) -> pebble.ProcessPool:
        """The family's pool, started if need be (with the lock held)."""
        if self._closed:  # stopped (a signal, the end of the process): no new workers
            raise HarnessError("the run was stopped")
        if family not in self._pools:
            self._pools[family] = pebble.ProcessPool(
                max_workers=self._workers_of(family),
                initializer=prepare_worker,
                initargs=(family, self._output_directory),
                context=_worker_context(family),
            )
        return self._pools[family]

    def _output_tail(self, pid: int | None) -> str:
        with contextlib.suppress(OSError, TypeError):
            with open(os.path.join(self._output_directory, f"{pid}.log"), errors="replace") as output:
                return output.read()[-OUTPUT_TAIL_CHARS:]
        return ""

    def close(self) -> None:
        """Stop every worker, busy or not, and remove their output files. The workers go first:
        a dispatch thread waits on its worker, and a busy one (a hang) would hold the close up
        until its timeout."""
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
            dispatchers, self._dispatchers = list(self._dispatchers.values()), {}
            scheduled, self._scheduled = list(self._scheduled), set()
        for future in scheduled:  # a running task's worker is terminated; its dispatch thread returns
            future.cancel()
        _stop(pools)
        for dispatcher in dispatchers:
            dispatcher.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._output_directory, ignore_errors=True)


class ArrivalOrderSlots:
    """A semaphore that grants its slots in the order they were asked for. threading.Semaphore
    lets the thread that releases take the slot straight back, so that a family with several
    dispatch threads (torch + onnxruntime) starved the one-worker families until the end of the
    run, which left one core idle through their work there."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiting: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            self._changed.wait_for(lambda: self._free > 0 and self._waiting[0] is ticket)
            self._waiting.popleft()
            self._free -= 1
            self._changed.notify_all()  # the next in line may find a slot free too

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify_all()


def _worker_context(family: str) -> multiprocessing.context.BaseContext:
    """How a family's workers start: forked from the fork server (torch loaded) where the platform
    has one, else spawned."""
    return _fork_server() if _forks_from_server(family) else multiprocessing.get_context("spawn")


def _fork_server() -> multiprocessing.context.BaseContext:
    """The forkserver context, its server (one per process) set to import harness.run.fork_server first."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["harness.run.fork_server"])  # read when the server starts
    return context


def _forks_from_server(family: str) -> bool:
    return family_record(family).forks_from_server and "forkserver" in multiprocessing.get_all_start_methods()


def _member_of(walk: Future, index: int) -> Future:
    """A future of one runner's result out of a shared walk's tuple."""
    member: Future = Future()

    def settle(done: Future) -> None:
        if done.cancelled():
            member.cancel()
            return
        error = done.exception()
        if error is not None:
            member.set_exception(error)
        else:
            member.set_result(done.result()[index])

    walk.add_done_callback(settle)
    return member


def _ports_torch_weights(family: str, case: Case | GraphCase) -> bool:
    """Whether a runner of `family` on `case` is a Keras port, given the torch model's weights
    (built in the torch family's worker)."""
    return family_record(family).keras_backend is not None and isinstance(case, Case)


def _stop(pools: Sequence[pebble.ProcessPool | None]) -> None:
    """Stop these pools' workers and wait for them to exit."""
    for pool in pools:
        if pool is not None:
            pool.stop()
            pool.join()


def _describe_exit(exitcode: int | None) -> str:
    """`signal SIGABRT (exit code -6)`."""
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-exitcode).name} (exit code {exitcode})"
    return f"exit code {exitcode}"


def _last_lines(text: str, count: int = 10) -> str:
    return "\n".join(text.strip().splitlines()[-count:])


_default: Executor | None = None
_settings: dict[str, Any] = {"jobs": 1, "timeout_s": DEFAULT_TIMEOUT_S}


def configure(jobs: int | None = None, timeout_s: float | None = None) -> None:
    """Set how the default executor runs (the command line's --jobs and --timeout); restarts it."""
    global _default
    if jobs is not None:
        _settings["jobs"] = jobs
    if timeout_s is not None:
        _settings["timeout_s"] = timeout_s
    if _default is not None:
        _default.close()
        _default = None


def default_executor() -> Executor:
    """The process's executor, started on first use and stopped at exit."""
    global _default
    if _default is None:
        _default = Executor(**_settings)
    return _default


@atexit.register
def shutdown() -> None:
    """Stop the default executor's workers (also at interpreter exit)."""
    global _default
    if _default is not None:
        _default.close()
        _default = None
