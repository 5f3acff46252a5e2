"""The harness's speed and memory, as ratios measured in one run (the machines are noisy).

    python benchmarks/bench.py [all|scripts|floor|scaling|memory] [--cases DIR]

1. scripts: the harness's whole run against running each case's standalone repro script (what
   users write by hand: one process per case, each paying its framework imports). Target >= 10x.
2. floor:   per case, the harness's time against the bare framework calls it makes (model build
   and forwards, the export, the onnxruntime session and run, the Keras build and call), timed
   in this process with warm imports. Target <= 1.25x.
3. scaling: the bundled library with --jobs 1 against --jobs 2. Target >= 1.7x on 2 cores.
4. memory:  peak RSS of a whole run, the harness and every worker process summed. Target <= 3 GiB.

Each figure is printed with its target, and MISSED where it misses it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def verdict(name: str, value: float, target: str, met: bool, detail: str) -> None:
    print(f"{name}: {value:.2f}{'x' if 'x' in target else ''} (target {target}) {'met' if met else 'MISSED'}; {detail}", flush=True)


def harness_run(cases: list[Path] | Path, jobs: int = 1, runners: str | None = None) -> float:
    """Wall time of `python -m harness run` in a fresh process (imports included)."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "harness", "run", *map(str, cases if isinstance(cases, list) else [cases]),
                   "--results", f"{scratch}/results.json", "--report", f"{scratch}/report.html", "--jobs", str(jobs)]
        if runners:
            command += ["--runners", runners]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return time.perf_counter() - start


def bench_scripts(case_dir: Path) -> None:
    from harness.cli import case_files
    from harness.engine import run_case
    from harness.repro import bundle_runners, write_bundle
    from harness.schema import load_case

    bundles, files, runners = [], [], {"torch-eager"}
    with tempfile.TemporaryDirectory() as scratch:
        for path in case_files([case_dir]):
            case = load_case(path, display_path=str(path))
            if not hasattr(case, "bn"):
                continue  # graph cases: their bundle runs other runtimes, not one runner
            result = run_case(case)
            names = bundle_runners(result)
            if names:
                files.append(path)
                runners.update(names)
                bundles += [write_bundle(case, result, name, Path(scratch)) for name in names]
        start = time.perf_counter()
        for bundle in bundles:
            subprocess.run([sys.executable, "-I", "repro.py"], cwd=bundle, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        by_script = time.perf_counter() - start
        ordered = [name for name in ("torch-eager", *sorted(runners - {"torch-eager"}))]
        by_harness = harness_run(files, runners=",".join(ordered))
    ratio = by_script / by_harness
    verdict("1. harness vs one script per case", ratio, ">= 10x", ratio >= 10,
            f"{len(bundles)} repro scripts ({len(files)} cases x their diverging runners) {by_script:.1f} s; "
            f"the harness on the same cases and runners ({', '.join(ordered)}) {by_harness:.1f} s")


def bench_floor(case_dir: Path) -> None:
    """Per case, the harness (warm workers) against the bare calls of its torch and ONNX runners."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import warnings

    import onnxruntime
    import torch

    from harness.cli import case_files
    from harness.execution import Executor
    from harness.inputs import make_batch
    from harness.runners.torch_models import apply_mode, build_model, to_tensor
    from harness.schema import load_case

    runners = ["torch-eager", "onnx-torchscript-ort", "onnx-dynamo-ort"]
    cases = [case for case in (load_case(path, display_path=str(path)) for path in case_files([case_dir]))
             if hasattr(case, "bn") and any(step.kind == "export" for step in case.steps)]

    def bare(case, dynamo: bool | None) -> None:
        """The runner's framework calls alone: torch-eager (dynamo None) or an exporter runner."""
        model, session = build_model(case), None
        with tempfile.TemporaryDirectory() as scratch:
            for step in case.steps:
                if step.kind in ("forward", "train_step"):
                    batch = to_tensor(make_batch(case.input, step.seed), case.input.dtype)
                    with torch.no_grad():
                        model(batch)
                    if session is not None:  # after an export, a forward runs the module and the graph
                        session.run(None, {session.get_inputs()[0].name: batch.numpy()})
                elif step.kind == "export" and dynamo is not None:
                    session = export(model, case, step, dynamo, scratch)
                elif step.kind == "set_mode":
                    apply_mode(model, step.mode)

    def export(model, case, step, dynamo: bool, scratch: str):
        example = to_tensor(make_batch(case.input, case.input.seed), case.input.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), f"{scratch}/m.onnx", dynamo=dynamo, opset_version=step.export.opset,
                              training=getattr(torch.onnx.TrainingMode, step.export.training.upper()))
        return onnxruntime.InferenceSession(f"{scratch}/m.onnx", providers=["CPUExecutionProvider"])

    executor = Executor(jobs=1)
    try:
        executor.run(cases[0], runners)  # warm the worker: imports are not per-case cost
        for case in cases[:1]:
            bare(case, None), bare(case, False), bare(case, True)  # warm this process too
        harness_s = floor_s = 0.0
        for case in cases:
            start = time.perf_counter()
            executor.run(case, runners)
            harness_s += time.perf_counter() - start
            start = time.perf_counter()
            bare(case, None), bare(case, False), bare(case, True)
            floor_s += time.perf_counter() - start
    finally:
        executor.close()
    ratio = harness_s / floor_s
    verdict("2. harness vs the framework floor", ratio, "<= 1.25x", ratio <= 1.25,
            f"{len(cases)} export cases x {', '.join(runners)}: harness {harness_s:.2f} s, bare calls {floor_s:.2f} s "
            "(Keras runners not in this figure)")


def bench_scaling(case_dir: Path) -> None:
    one = harness_run(case_dir, jobs=1)
    two = harness_run(case_dir, jobs=2)
    ratio = one / two
    verdict("3. scaling, --jobs 1 vs --jobs 2", ratio, ">= 1.7x", ratio >= 1.7,
            f"{one:.1f} s vs {two:.1f} s on {os.cpu_count()} cores")


def bench_memory(case_dir: Path, jobs: int = 1) -> None:
    import psutil

    with tempfile.TemporaryDirectory() as scratch:
        run = subprocess.Popen([sys.executable, "-m", "harness", "run", str(case_dir), "--results", f"{scratch}/r.json",
                                "--report", f"{scratch}/r.html", "--jobs", str(jobs)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0
        process = psutil.Process(run.pid)
        while run.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
    gib = peak / 2**30
    verdict(f"4. peak RSS of a whole run (--jobs {jobs})", gib, "<= 3 GiB", gib <= 3, "the harness and its workers summed")


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
