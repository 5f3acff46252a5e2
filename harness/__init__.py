"""A differential testing harness for BatchNorm across PyTorch, ONNX runtimes and Keras."""

__version__ = "0.1.0"
