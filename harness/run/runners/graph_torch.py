"""`graph-torch`: the torch BatchNorm a graph case's BatchNormalization node stands for, run on
the same inputs, so that a hand-built node (or a backend test's) is compared with torch directly,
not only with the ONNX spec's oracle.

The node maps to torch as an exporter maps torch to it, read backwards: BatchNorm1d/2d/3d by the
input's rank, eps = epsilon, momentum = 1 - ONNX's momentum (ONNX weights the old value, torch
the new batch), weight, bias and running statistics from the node's inputs, train() for a
training-mode node. Its running variance follows torch's own update (the unbiased batch
variance), which is a convention of its own: the attribution reads that from its calls. Opt-in:
it runs where a case lists it.
"""

from __future__ import annotations

import numpy as np

from harness.core.case import GraphCase
from harness.core.results import BNCall, RunResult
from harness.run.runners.base import FrameworkMissing, ObservationLog, Runner, import_frameworks, skipped
from harness.run.runners.graph import ONNX_HINT, OUTPUT_FIELDS, load_source, single_batchnorm


class TorchNodeRunner(Runner):
    """A torch BatchNorm built from the graph's single BatchNormalization node, stepped as the
    graph is (a training node's statistics carried from step to step, as the runtimes are fed)."""

    def run(self, case: GraphCase) -> RunResult:
        try:
            versions = import_frameworks(("onnx", "torch"), ONNX_HINT + " torch==2.13.0")
        except FrameworkMissing as missing:
            return skipped(self.name, str(missing))
        import torch

        from harness.run.runners.onnx_graph import stored_values

        source = load_source(case)
        single = single_batchnorm(source)
        if single is None:
            return skipped(self.name, "the graph is not a single BatchNormalization node: no torch BatchNorm stands for it")
        graph_node, node = single
        if node.per_activation:
            return skipped(self.name, "spatial=0 (statistics per activation) has no torch BatchNorm")
        log = ObservationLog(self.name)
        log.details["versions"] = versions
        log.details["mapping"] = {"eps": node.epsilon, "momentum": 1.0 - node.momentum, "train": node.training}
        stored = stored_values(source.model)
        named = [bool(name) for name in graph_node.output]
        state = dict(source.initial_state)
        torch.set_num_threads(1)
        for step, feeds in enumerate(source.feeds(case, state)):
            values = {**stored, **feeds}
            data, scale, bias, mean, var = (np.asarray(values[name]) for name in graph_node.input[:5])
            if data.ndim not in (2, 3, 4, 5):
                log.details["failed_step"] = step
                return log.result("run_failed", f"torch has no BatchNorm for an input of rank {data.ndim}")
            kind = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[data.ndim]
            dtype = getattr(torch, str(data.dtype))
            bn = kind(data.shape[1], eps=node.epsilon, momentum=1.0 - node.momentum).to(dtype)
            with torch.no_grad():
                for target, array in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var)):
                    target.copy_(torch.from_numpy(np.asarray(array, dtype=data.dtype)))
            bn.train(node.training)
            log.bn_calls[(step, "")] = BNCall(
                semantics="pytorch",
                input=data.astype(np.float64),
                channel_axis=1,
                uses_batch_stats=node.training,
                updates_running_stats=node.training,
                eps=node.epsilon,
                momentum=1.0 - node.momentum,
                weight=scale.astype(np.float64),
                bias=bias.astype(np.float64),
                running_mean_before=mean.astype(np.float64),
                running_var_before=var.astype(np.float64),
            )
            try:
                with torch.no_grad():
                    output = bn(torch.from_numpy(data))
            except Exception as error:  # torch's own refusals (one value per channel in training)
                log.details["failed_step"] = step
                return log.result("run_failed", f"{type(error).__name__}: {error}")
            outputs = [output.double().numpy()]
            if node.training:
                outputs += [bn.running_mean.double().numpy(), bn.running_var.double().numpy()]
            for position, array in enumerate(outputs):
                if position < len(named) and named[position]:
                    log.array(step, OUTPUT_FIELDS[position], array.copy(), str(data.dtype))
            if source.state_inputs and node.training:  # the torch side's own statistics, carried as the graph's are
                state.update(zip(source.state_inputs, (outputs[1].astype(mean.dtype), outputs[2].astype(var.dtype))))
        return log.result()
