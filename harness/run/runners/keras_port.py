"""The case's model rebuilt in Keras 3 with the torch weights copied in, called with the torch
module's modes.

Imports nothing from the harness: the worker wraps it in the harness's records, and Keras repro
scripts carry its source verbatim, so that the script and the runner are the same port.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BN_WEIGHT_ORDER = ("weight", "bias", "running_mean", "running_var")  # Keras: gamma, beta, moving_mean, moving_variance


class KerasPort:
    """Keras layers standing for the torch submodules, built from the model table's entry (`layers`).

    `settings` holds the Keras parameters (axis, momentum, epsilon, center, scale, trainable), how
    `training=` is passed ("explicit" or "omitted") and how the running variance is reported
    ("unbiased": re-expressed in torch's convention; "as_stored": biased, as Keras stores it).
    """

    frozen: frozenset[str] | set[str] = frozenset()  # frozen BatchNorms (a user model's): never reset, always in inference
    recording = True  # False inside a fit's call, whose tensors may be traced: no value can be read there
    fit_training: bool | None = None  # the training= a fit hands the model (None: not in a fit)
    _model: Any = None  # the keras.Model a fit trains, made at the first fit after the modes last changed

    def __init__(
        self,
        keras: Any,
        layers: dict[str, Any],
        shape: tuple[int, ...],
        num_features: int,
        dtype: str,
        settings: dict[str, Any],
        submodule_paths: tuple[str, ...],
        batchnorm_paths: tuple[str, ...],
        weights: dict[str, np.ndarray],
        mode: list[tuple[str, bool]],
        input_dtype: str | None = None,
        channels_last: bool | None = None,
    ) -> None:
        self.keras, self.root, self.shape, self.num_features = keras, layers, tuple(shape), num_features
        # A bare BatchNorm keeps torch's layout unless asked for Keras's own (N...C); a model with
        # convolutions runs channels-last, as Conv2D wants.
        self.channels_last = layers["kind"] != "batchnorm" if channels_last is None else channels_last
        rank = len(self.shape)
        self._to_last = (0, *range(2, rank), 1)  # torch's N C ... -> Keras's N ... C
        self._to_first = (0, rank - 1, *range(1, rank - 1))
        self._nhwc = self.channels_last  # whether the tensor flowing through the port is channels-last
        self.dtype, self.settings = dtype, dict(settings)
        self.input_dtype = input_dtype or dtype  # the data is fed as torch gets it; Keras casts it to the layers' dtype
        self.training = dict.fromkeys(submodule_paths, False)
        self.apply_mode(mode)
        self.layers: dict[str, Any] = {}
        self.bn_copied: dict[str, bool] = {}
        self._build(weights)
        # Running variance re-expressed in torch's unbiased convention, from Keras's own updates.
        self.unbiased_var = {path: self.stored(path, "moving_variance") for path in batchnorm_paths}
        self.last_stored_var = dict(self.unbiased_var)
        self.updated: set[str] = set()
        self.elements_per_channel: dict[str, int] = {}  # of each BN's own input, at its last call
        self.calls: dict[str, dict[str, Any]] = {}  # what each BN was given at the last forward, for the oracles
        self.outputs: dict[str, np.ndarray] = {}  # what each BN returned at the last forward, torch's layout
        self.output_dtype = dtype  # of the last forward's output, as Keras returned it

    def apply_mode(self, assignments) -> None:
        """`module.get_submodule(path).train(flag)` for each (path, flag): recursive, as in torch."""
        for path, training in assignments:
            for name in self.training:
                if path == "" or name == path or name.startswith(path + "."):
                    self.training[name] = training
        self._model = None  # a fit's compiled train function holds the flags it was traced with

    def apply_state(self, assignments, reset: bool = False, reset_paths=()) -> None:
        """What a set_state or reset_running_stats step does to the torch module, done to the port's
        BatchNormalization variables (weight -> gamma, bias -> beta, running_* -> moving_*); the
        value written is also where the unbiased re-expression of the variance starts again."""
        names = dict(zip(BN_WEIGHT_ORDER, ("gamma", "beta", "moving_mean", "moving_variance")))
        writes = [(path, name, np.asarray(values, dtype=np.float64)) for path, name, values in assignments]
        if reset:
            for path in self.unbiased_var:
                if (not reset_paths or path in reset_paths) and path not in self.frozen:  # as in torch: a frozen one has none
                    shape = tuple(self.layers[path].moving_mean.shape)
                    writes += [(path, "running_mean", np.zeros(shape)), (path, "running_var", np.ones(shape))]
        for path, name, values in writes:
            variable = getattr(self.layers[path], names[name])
            variable.assign(values.astype(self._numpy_dtype(self.dtype)))
            if name == "running_var":
                self.unbiased_var[path] = self.last_stored_var[path] = self.stored(path, "moving_variance")

    def _build(self, weights: dict[str, np.ndarray]) -> None:
        shape = self.shape
        if self.channels_last:
            shape = (shape[0], *shape[2:], shape[1])
        self._build_layer(self.root, "", shape, weights)

    def _build_layer(self, layer: dict[str, Any], path: str, shape: tuple, weights: dict[str, np.ndarray]) -> tuple:
        """Build the Keras layer standing for `layer` at `path`; the shape it returns."""
        kind = layer["kind"]
        if kind == "block":
            for child in layer["layers"]:
                shape = self._build_layer(child, self._child_path(path, child), shape, weights)
            return shape  # a residual block's output has its input's shape
        if kind == "batchnorm":
            self._add_bn(path, shape, weights)
        elif kind == "conv2d":
            self._add_conv(path, layer, shape, weights)
        elif kind == "linear":
            dense = self.keras.layers.Dense(layer["out_features"] or self.num_features, use_bias=layer["bias"], dtype=self.dtype)
            dense.build(shape)
            dense.set_weights([weights[f"{path}.weight"].T] + ([weights[f"{path}.bias"]] if layer["bias"] else []))
            self.layers[path] = dense
        elif kind == "flatten":
            return (shape[0], int(np.prod(shape[1:])))
        else:  # relu
            return shape
        return tuple(self.layers[path].compute_output_shape(shape))

    def _add_conv(self, path: str, layer: dict[str, Any], input_shape, weights) -> None:
        padding = {0: "valid", (layer["kernel"] - 1) // 2: "same"}[layer["padding"]]  # the paddings Keras has
        if layer.get("depthwise"):  # torch (C, 1, kH, kW) -> Keras (kH, kW, C, 1)
            kernel = weights[f"{path}.weight"].transpose(2, 3, 0, 1)
            conv = self.keras.layers.DepthwiseConv2D(layer["kernel"], padding=padding, use_bias=layer["bias"], dtype=self.dtype)
        else:
            kernel = weights[f"{path}.weight"].transpose(2, 3, 1, 0)  # torch OIHW -> Keras HWIO
            conv = self.keras.layers.Conv2D(kernel.shape[-1], layer["kernel"], padding=padding, use_bias=layer["bias"], dtype=self.dtype)
        conv.build(input_shape)
        conv.set_weights([kernel] + ([weights[f"{path}.bias"]] if layer["bias"] else []))
        self.layers[path] = conv

    def _add_bn(self, path: str, input_shape, weights: dict[str, np.ndarray]) -> None:
        settings = {**self.settings, **self.settings.get("per_bn", {}).get(path, {})}  # a BatchNorm's own values first
        layer = self.keras.layers.BatchNormalization(
            axis=settings["axis"],
            momentum=settings["momentum"],
            epsilon=settings["epsilon"],
            center=settings["center"],
            scale=settings["scale"],
            dtype=self.dtype,
        )
        layer.build(input_shape)
        layer.trainable = settings["trainable"]
        prefix = f"{path}." if path else ""
        values = [weights[prefix + name] for name in BN_WEIGHT_ORDER if prefix + name in weights]
        if not settings["center"]:
            values = values[-2:]
        fits = all(value.shape == variable.shape for value, variable in zip(values, layer.weights))
        if fits and len(values) == len(layer.weights):
            layer.set_weights(values)
        self.bn_copied[path] = fits
        self.layers[path] = layer

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The port's output, as float64, for a batch in torch's layout."""
        ops = self.keras.ops
        self.updated = set()
        y = self.forward(ops.convert_to_tensor(batch.astype(self._numpy_dtype(self.input_dtype))))
        self.output_dtype = self.keras.backend.standardize_dtype(y.dtype)
        return np.asarray(ops.convert_to_numpy(y)).astype(np.float64)

    def forward(self, x):
        """The port on a tensor in torch's layout, the result in torch's layout: what `__call__`
        and the fit's model run."""
        ops = self.keras.ops
        self._nhwc = self.channels_last
        y = self._run(self.root, "", ops.transpose(x, self._to_last) if self.channels_last else x)
        return ops.transpose(y, self._to_first) if self._nhwc else y

    def fit_step(self, batch: np.ndarray, batch_size: int) -> None:
        """`model.fit(batch, zeros, batch_size=batch_size, epochs=1, shuffle=False)` on a keras.Model
        that holds the port's layers, compiled with SGD(learning_rate=0) and an MSE loss: the weights
        stay, only the moving statistics move, once per mini-batch, as a user's training loop moves them.

        A compiled fit gives no values to read, so what each BatchNorm is given comes from an eager
        replay of the same mini-batches before the fit, whose variables are then restored. The
        replay sees what the fit sees: the weights do not move, a BatchNorm in training normalises
        with its mini-batch's statistics and one in inference with statistics no mini-batch moves.
        `calls` then holds one call per BatchNorm with every mini-batch's input, in order, and
        `mini_batch`; `outputs` stays empty: the fit returns a loss, not the model's output."""
        chunks = [batch[start : start + batch_size] for start in range(0, len(batch), batch_size)]
        names = ("moving_mean", "moving_variance")
        before = {path: [self.stored(path, name) for name in names] for path in self.unbiased_var}
        replayed, targets, updated = [], [], set()
        self.fit_training = True  # what the fit hands the model: the replay must take the same flags
        try:
            for chunk in chunks:
                targets.append(np.zeros_like(self(chunk)))
                replayed.append(self.calls)
                updated |= self.updated
                self.calls, self.outputs = {}, {}
        finally:
            self.fit_training = None
        for path, values in before.items():
            for name, value in zip(names, values):
                getattr(self.layers[path], name).assign(value.astype(self._numpy_dtype(self.dtype)))
        x = batch.astype(self._numpy_dtype(self.input_dtype))
        self._fit_model().fit(x, np.concatenate(targets), batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        self.calls = {
            path: {**call, "input": np.concatenate([calls[path]["input"] for calls in replayed]), "mini_batch": batch_size}
            for path, call in replayed[0].items()
        }
        self.updated = updated

    def _fit_model(self):
        """The keras.Model a fit trains: the port's layers tracked, its call the port's forward."""
        if self._model is None:
            port, keras = self, self.keras

            class PortModel(keras.Model):  # type: ignore[name-defined, misc]
                def __init__(self) -> None:
                    super().__init__()
                    self.port_layers = port.keras_layers()

                def call(self, x, training=None):
                    port.recording, port.fit_training = False, training
                    try:
                        return port.forward(x)
                    finally:
                        port.recording, port.fit_training = True, None

            self._model = PortModel()
            self._model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mean_squared_error")
        return self._model

    def keras_layers(self) -> list[Any]:
        """Every Keras layer of the port (a chain's too), for a model that tracks their variables."""
        return [inner for layer in self.layers.values() for inner in getattr(layer, "layers", [layer])]

    def _run(self, layer: dict[str, Any], path: str, h):
        """`layer` of the model table applied to `h`, as the torch module runs it."""
        kind, ops = layer["kind"], self.keras.ops
        if kind == "block":
            identity = h
            for child in layer["layers"]:
                h = self._run(child, self._child_path(path, child), h)
            return ops.add(identity, h) if layer.get("residual") else h
        if kind == "batchnorm":
            return self._bn(path, h)
        if kind == "relu":
            return ops.relu(h)
        if kind == "flatten":
            if self._nhwc:  # torch flattens channels first
                h, self._nhwc = ops.transpose(h, (0, 3, 1, 2)), False
            return ops.reshape(h, (-1, int(np.prod(h.shape[1:]))))  # -1: a fit traces an unknown batch size
        return self.layers[path](h)

    def _bn(self, path: str, h):
        layer = self.layers[path]
        if self.recording:  # not inside a fit's traced call, where no value can be read
            self.elements_per_channel[path] = int(np.prod(h.shape)) // int(h.shape[layer.axis])
            self.calls[path] = self._call(path, layer, h)
        if self.settings["training_argument"] == "omitted":
            result = layer(h)  # what a port that forgets training= does: Keras runs in inference
        else:
            training = self._training_passed(path)
            if training and layer.trainable:  # Keras's own condition for updating the moving statistics
                self.updated.add(path)
            result = layer(h, training=training)
        if path and self.recording:  # a bare BatchNorm's output is the model's
            self.outputs[path] = self._nchw(np.asarray(self.keras.ops.convert_to_numpy(result)).astype(np.float64))
        return result

    def _training_passed(self, path: str) -> bool:
        """The training= the BN's call gets: its own torch module's flag (explicit), or the model's,
        as `model(x, training=True)` hands it to every layer (model); `omitted` passes none."""
        if self.settings["training_argument"] == "model":
            return self.training[""] if self.fit_training is None else bool(self.fit_training)
        return self.training[path]

    def _nchw(self, values: np.ndarray) -> np.ndarray:
        """A BN's output in torch's layout, where the port runs channels-last."""
        return values.transpose(self._to_first) if self.channels_last and values.ndim == len(self.shape) > 2 else values

    def _call(self, path: str, layer, h) -> dict[str, Any]:
        """The layer's call in Keras terms, with the variance as the port reports it; the input in
        torch's layout (the channel axis moved with it), as the port reports what the BN returned."""
        passed = self.settings["training_argument"] != "omitted"
        batch_stats = passed and self._training_passed(path) and layer.trainable  # Keras: `if training and self.trainable`
        convention = self.settings["running_var"]
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        values = np.asarray(self.keras.ops.convert_to_numpy(h)).astype(np.float64)
        if values.ndim == len(self.shape) > 2 and self.channels_last:
            # In torch's layout, as the port reports the BatchNorm's output: N...C axis -> NC... axis.
            values, axis = self._nchw(values), self._to_last[axis % values.ndim]
        return {
            "input": values,
            "channel_axis": axis,
            "uses_batch_stats": batch_stats,
            "updates_running_stats": batch_stats,
            "eps": float(layer.epsilon),
            "momentum": float(layer.momentum),
            "weight": self.stored(path, "gamma") if layer.scale else None,
            "bias": self.stored(path, "beta") if layer.center else None,
            "running_mean_before": self.stored(path, "moving_mean"),
            "running_var_before": self.unbiased_var[path] if convention == "unbiased" else self.stored(path, "moving_variance"),
            "stored_var_before": self.stored(path, "moving_variance"),
            "running_var_reported": convention,
        }

    def end_step(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each BN's (running mean, running variance as reported) after a step; also clears what
        the last forward recorded in `calls` and `outputs`."""
        self.calls, self.outputs = {}, {}
        state = {}
        for path in self.unbiased_var:
            stored_var = self.stored(path, "moving_variance")
            if path in self.updated:
                momentum = self.layers[path].momentum
                n = self.elements_per_channel[path]
                # stored = m * previous + (1 - m) * biased, so (stored - m * previous) is Keras's own
                # batch term; scaled by n / (n - 1) it is the term torch would have added.
                batch_term = stored_var - momentum * self.last_stored_var[path]
                self.unbiased_var[path] = momentum * self.unbiased_var[path] + batch_term * n / (n - 1)
            self.last_stored_var[path] = stored_var
            reported = self.unbiased_var[path] if self.settings["running_var"] == "unbiased" else stored_var
            state[path] = (self.stored(path, "moving_mean"), reported)
        self.updated = set()
        return state

    def stored(self, path: str, name: str) -> np.ndarray:
        """A Keras variable of the BN at `path` (gamma, beta, moving_mean, moving_variance), as float64."""
        variable = getattr(self.layers[path], name)
        # A copy: on the numpy backend convert_to_numpy may hand back the variable's own array.
        return np.array(self.keras.ops.convert_to_numpy(variable), dtype=np.float64, copy=True)

    @staticmethod
    def _child_path(path: str, child: dict[str, Any]) -> str:
        """A child's submodule path, torch's: `head.block`; a functional op keeps its block's."""
        name = child.get("name")
        return f"{path}.{name}" if path and name else name or path

    @staticmethod
    def _numpy_dtype(name: str):
        if name == "bfloat16":
            import ml_dtypes

            return ml_dtypes.bfloat16
        return np.dtype(name)
