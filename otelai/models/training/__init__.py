"""Offline training of the bundled detectors (needs the optional ``train`` extra).

Each module trains one kind of detector with its framework (PyTorch, scikit-learn), imported
lazily inside the functions, and exports it to an ONNX graph the service serves through its
inference backends (:mod:`otelai.detectors.bundled`).
"""
