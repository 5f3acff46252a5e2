"""Input batches from a case's input spec: seeded, reproducible, framework-free (float64 NumPy)."""

from __future__ import annotations

import numpy as np

from harness.core.case import InputSpec, Step


def make_batch(spec: InputSpec, seed: int) -> np.ndarray:
    """The batch drawn with `seed` (literal values ignore it), in float64; runners cast it."""
    if spec.values is not None:
        return np.asarray(spec.values, dtype=np.float64).reshape(spec.shape)
    batch = np.random.default_rng(seed).normal(spec.mean, spec.std, size=spec.shape)
    channel_shape = (1, spec.shape[1]) + (1,) * (len(spec.shape) - 2)
    if spec.channel_scale is not None:
        batch = batch * np.asarray(spec.channel_scale).reshape(channel_shape)
    if spec.channel_offset is not None:
        batch = batch + np.asarray(spec.channel_offset).reshape(channel_shape)
    for channel, value in spec.constant_channels:
        batch[:, channel] = value
    return batch


def step_batch(case_input: InputSpec, step: Step) -> np.ndarray:
    """The batch a forward or train_step feeds: drawn from its own input when the step has one
    (another shape, distribution or literal values), else from the case's, with the step's seed."""
    return make_batch(step.input or case_input, step.seed if step.seed is not None else case_input.seed)
