"""The harness's speed and memory, as ratios measured in one run (the machines are noisy).

    python benchmarks/bench.py [all|scripts|floor|scaling|memory] [--cases DIR]

1. scripts: the harness's whole run against running each case's standalone repro script (what
   users write by hand: one process per case, each paying its framework imports). Target >= 10x.
2. floor:   per case, the harness's time against the bare framework calls it makes (model build
   and forwards, one export per exporter, the onnxruntime sessions and reference evaluator and
   their runs, the Keras build and calls), timed in this process with warm imports and one compute
   thread, as in the harness's workers. Target <= 1.25x.
3. scaling: the bundled library with --jobs 1 against --jobs 2, two runs each in the order
   1, 2, 2, 1. Target >= 1.7x on 2 cores.
4. memory:  peak memory of a whole run, the harness and every worker process: their PSS summed
   (summed RSS, printed beside it, counts the frameworks' shared pages once per process). Target <= 3 GiB.

Each figure is printed with its target, and MISSED where it misses it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def verdict(name: str, value: float, target: str, met: bool, detail: str) -> None:
    unit = "x" if target.endswith("x") else " GiB" if target.endswith("GiB") else ""
    print(f"{name}: {value:.2f}{unit} (target {target}) {'met' if met else 'MISSED'}; {detail}", flush=True)


def harness_run(cases: list[Path] | Path, jobs: int = 1, runners: str | None = None) -> float:
    """Wall time of `python -m harness run` in a fresh process (imports included)."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable,
            "-m",
            "harness",
            "run",
            *map(str, cases if isinstance(cases, list) else [cases]),
            "--results",
            f"{scratch}/results.json",
            "--report",
            f"{scratch}/report.html",
            "--jobs",
            str(jobs),
        ]
        if runners:
            command += ["--runners", runners]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return time.perf_counter() - start


def bench_scripts(case_dir: Path) -> None:
    from harness.frontends.cli import case_files
    from harness.frontends.session import Session
    from harness.load.schema import load_cases
    from harness.report.repro import bundle_runners, write_bundle

    bundles, files, runners = [], [], {"torch-eager"}
    paths = list(case_files([case_dir]))
    cases = {case.case_id: case for path in paths for case in load_cases(path, display_path=str(path))}
    with tempfile.TemporaryDirectory() as scratch:
        session = Session()
        for result in session.run([item for path in paths for item in session.load(path)]):
            case = cases[result.case_id]
            if not hasattr(case, "bn"):
                continue  # graph cases: their bundle runs other runtimes, not one runner
            names = bundle_runners(result)
            if names:
                # the very case, a grid point by its id: the harness runs what the scripts run
                files.append(Path(case.path) if Path(case.path).stem == case.case_id else Path(f"{case.path}::{case.case_id}"))
                runners.update(names)
                bundles += [write_bundle(case, result, name, Path(scratch)) for name in names]
        start = time.perf_counter()
        for bundle in bundles:
            subprocess.run(
                [sys.executable, "-I", "repro.py"], cwd=bundle, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
            )
        by_script = time.perf_counter() - start
        ordered = [name for name in ("torch-eager", *sorted(runners - {"torch-eager"}))]
        by_harness = harness_run(files, runners=",".join(ordered))
    ratio = by_script / by_harness
    verdict(
        "1. harness vs one script per case",
        ratio,
        ">= 10x",
        ratio >= 10,
        f"{len(bundles)} repro scripts ({len(files)} cases x their diverging runners) {by_script:.1f} s; "
        f"the harness on the same cases and runners ({', '.join(ordered)}) {by_harness:.1f} s",
    )


def bench_floor(case_dir: Path) -> None:
    """Per case, the harness (warm workers) against the bare framework calls its runners make, in
    this process: the torch walk, one export per exporter (runners sharing an export share it, as
    in the harness), a session per ONNX executor, and the Keras build and calls (tensorflow)."""
    from harness.run.execution import Executor, compute_on_one_thread

    os.environ["KERAS_BACKEND"] = "tensorflow"
    compute_on_one_thread()  # as the harness's workers compute
    import keras
    import onnx
    import torch

    from harness.core.inputs import make_batch
    from harness.core.keras_mapping import Unmappable, keras_mapping
    from harness.core.runner_table import REFERENCE_RUNNER, RUNNERS, runner_record
    from harness.frontends.cli import case_files
    from harness.load.schema import load_cases
    from harness.run.runners.onnx_export import open_executor
    from harness.run.runners.torch_models import apply_mode, build_model, to_tensor

    exporters = {
        dynamo: tuple(record.name for record in RUNNERS.values() if record.exporter == exporter)
        for dynamo, exporter in ((False, "torchscript"), (True, "dynamo"))
    }
    measured = (REFERENCE_RUNNER, *exporters[False], *exporters[True], "keras-tensorflow")
    torch.set_num_threads(1)  # in case torch was imported here before the environment was set

    def executor_for(graph, name: str):
        """The session (or evaluator) the runner `name` opens on the graph, as the harness opens it."""
        session, input_name, _ = open_executor(graph, runner_record(name).executor)
        return lambda feeds: session.run(None, {input_name: feeds["input"]})

    def torch_walk(case, scratch: str, executors: tuple[str, ...] = (), dynamo: bool = False) -> None:
        """The module's steps; at an export, one export and an executor for each of `executors`."""
        model, deployed = build_model(case), []
        for step in case.steps:
            if step.kind in ("forward", "train_step"):
                batch = to_tensor(make_batch(case.input, step.seed), case.input.dtype)
                with torch.no_grad():
                    model(batch)
                for run in deployed:  # after an export, a forward runs the module and the graph
                    run({"input": batch.numpy()})
            elif step.kind == "export" and executors:
                example = to_tensor(make_batch(case.input, case.input.seed), case.input.dtype)
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        model,
                        (example,),
                        f"{scratch}/m.onnx",
                        dynamo=dynamo,
                        opset_version=step.export.opset,
                        training=getattr(torch.onnx.TrainingMode, step.export.training.upper()),
                    )
                graph = onnx.load(f"{scratch}/m.onnx")
                deployed = [executor_for(graph, name) for name in executors]
            elif step.kind == "set_mode":
                apply_mode(model, step.mode)

    def keras_walk(case) -> None:
        """A Keras BatchNormalization with the mapped parameters, its weights set, called per step."""
        settings = {parameter.name: parameter.value for parameter in keras_mapping(case).parameters}
        layer = keras.layers.BatchNormalization(
            axis=settings["axis"],
            momentum=settings["momentum"],
            epsilon=settings["epsilon"],
            center=settings["center"],
            scale=settings["scale"],
        )
        inputs = keras.Input(case.input.shape[1:])
        model = keras.Model(inputs, layer(inputs))
        layer.set_weights([np.ones(w.shape, "float32") for w in layer.get_weights()])
        training = dict(case.mode.assignments)[""]
        for step in case.steps:
            if step.kind in ("forward", "train_step"):
                model(make_batch(case.input, step.seed).astype("float32"), training=training)

    def bare(case, runners: tuple[str, ...]) -> None:
        walks = [lambda scratch: torch_walk(case, scratch)]
        for dynamo, group in exporters.items():
            present = tuple(name for name in group if name in runners)
            if present:
                walks.append(lambda scratch, present=present, dynamo=dynamo: torch_walk(case, scratch, present, dynamo))
        if "keras-tensorflow" in runners:
            walks.append(lambda scratch: keras_walk(case))
        with tempfile.TemporaryDirectory() as scratch:
            for walk in walks:
                try:
                    walk(scratch)
                except Exception:  # noqa: BLE001 - a refused export or batch ends that runner in the harness too
                    pass

    def runners_of(case) -> tuple[str, ...]:
        wanted = [name for name in (case.runners or measured) if name in measured]
        if "keras-tensorflow" in wanted:
            try:  # the bare port here is a lone BatchNorm; other models' Keras runs are left out
                keras_mapping(case)
                simple = case.model_spec.is_bare_batchnorm and len(case.mode.assignments) == 1
            except Unmappable:
                simple = False
            if not simple:
                wanted.remove("keras-tensorflow")
        return tuple(["torch-eager", *(name for name in wanted if name != "torch-eager")])

    cases = [
        (case, runners_of(case))
        for case in (case for path in case_files([case_dir]) for case in load_cases(path, display_path=str(path)))
        if hasattr(case, "bn") and case.bn.dtype == "float32" and case.input.dtype == "float32"
    ]
    executor = Executor(jobs=1)
    timed: dict[bool, list[float]] = {False: [0.0, 0.0], True: [0.0, 0.0]}  # user model? -> harness s, bare s
    try:
        for case, runners in cases[:3]:  # warm the workers and this process: imports are not per-case cost
            executor.run(case, runners), bare(case, runners)
        for case, runners in cases:
            start = time.perf_counter()
            executor.run(case, runners)
            middle = time.perf_counter()
            bare(case, runners)
            totals = timed[case.user_model is not None]
            totals[0] += middle - start
            totals[1] += time.perf_counter() - middle
    finally:
        executor.close()
    harness_s, floor_s = timed[False][0] + timed[True][0], timed[False][1] + timed[True][1]
    ratio = harness_s / floor_s
    counts = {name: sum(name in runners for _, runners in cases) for name in measured}
    verdict(
        "2. harness vs the framework floor",
        ratio,
        "<= 1.25x",
        ratio <= 1.25,
        f"{len(cases)} float32 cases, runner-cases: "
        + ", ".join(f"{name} {count}" for name, count in counts.items())
        + f"; harness {harness_s:.2f} s, bare calls {floor_s:.2f} s",
    )
    users = [(case, runners) for case, runners in cases if case.user_model is not None]
    if users:  # the same figure for the users' own models alone: their build goes through the factory
        user_ratio = timed[True][0] / timed[True][1]
        verdict(
            "2u. a user model vs the framework floor",
            user_ratio,
            "<= 1.25x",
            user_ratio <= 1.25,
            f"{len(users)} user-model cases ({', '.join(case.model for case, _ in users)}), runner-cases: "
            + ", ".join(f"{name} {sum(name in runners for _, runners in users)}" for name in measured)
            + f"; harness {timed[True][0]:.2f} s, bare calls {timed[True][1]:.2f} s",
        )


def bench_scaling(case_dir: Path) -> None:
    # In the order 1, 2, 2, 1: a machine whose speed drifts during the benchmark (these do, by
    # tens of percent within minutes) then slows both sides alike.
    first, second, third, fourth = (harness_run(case_dir, jobs=jobs) for jobs in (1, 2, 2, 1))
    one, two = first + fourth, second + third
    ratio = one / two
    verdict(
        "3. scaling, --jobs 1 vs --jobs 2",
        ratio,
        ">= 1.7x",
        ratio >= 1.7,
        f"runs in the order 1, 2, 2, 1: {first:.1f}, {second:.1f}, {third:.1f}, {fourth:.1f} s on {os.cpu_count()} cores",
    )


def bench_memory(case_dir: Path, jobs: int = 1) -> None:
    """The run's memory is its processes' proportional set sizes summed (PSS: a page shared by k
    processes counts 1/k in each): summed RSS counts torch's and the other frameworks' shared
    library pages once per worker. Both are printed; the target is judged on the first."""
    import psutil

    with tempfile.TemporaryDirectory() as scratch:
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness",
                "run",
                str(case_dir),
                "--results",
                f"{scratch}/r.json",
                "--report",
                f"{scratch}/r.html",
                "--jobs",
                str(jobs),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peak_pss = peak_rss = 0
        process = psutil.Process(run.pid)
        while run.poll() is None:
            pss = rss = 0
            with contextlib.suppress(psutil.Error):
                for member in [process, *process.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # a worker that exits while it is read
                        memory = member.memory_full_info()
                        pss, rss = pss + memory.pss, rss + memory.rss
            peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
            time.sleep(0.1)
    gib = peak_pss / 2**30
    verdict(
        f"4. peak memory of a whole run (--jobs {jobs})",
        gib,
        "<= 3 GiB",
        gib <= 3,
        f"the harness and its workers, summed PSS (shared pages counted once); "
        f"summed RSS (shared library pages once per process) {peak_rss / 2**30:.2f} GiB",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="?", default="all", choices=["all", "scripts", "floor", "scaling", "memory"])
    parser.add_argument("--cases", type=Path, default=ROOT / "cases")
    args = parser.parse_args()
    chosen = ["scripts", "floor", "scaling", "memory"] if args.which == "all" else [args.which]
    for name in chosen:
        if name == "memory":
            bench_memory(args.cases, 1)
            bench_memory(args.cases, 2)
        else:
            globals()[f"bench_{name}"](args.cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
