"""A small autoencoder ONNX model and its numpy reference, for backend contract tests and benchmarks.

The graph is a one-hidden-layer dense autoencoder, ``y = relu(x W1 + b1) W2 + b2``, with the
reconstruction error ``mean((x - y)^2)`` per row as a second output: the shape of the detectors'
autoencoder scorer (reconstruction-error anomaly detection, Sakurada & Yairi, MLSDA 2014).
Building the model needs the ``onnx`` package (a development dependency); running it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from otelai.backends.base import FloatArray

__all__ = ["IR_VERSION", "OPSET", "Autoencoder", "autoencoder"]

#: IR 10 / opset 17: newer ``onnx`` writes IR versions that current runtimes refuse to load.
IR_VERSION = 10
OPSET = 17


@dataclass(frozen=True)
class Autoencoder:
    """The model's weights, its serialised ONNX bytes, and a numpy reference of the same graph."""

    w1: FloatArray
    b1: FloatArray
    w2: FloatArray
    b2: FloatArray
    onnx: bytes

    @property
    def n_features(self) -> int:
        return int(self.w1.shape[0])

    def reference(self, x: FloatArray) -> dict[str, FloatArray]:
        """Compute both outputs in float64 and return them as float32."""
        x64 = x.astype(np.float64)
        hidden = np.maximum(x64 @ self.w1 + self.b1, 0.0)
        y = hidden @ self.w2 + self.b2
        score = np.mean((x64 - y) ** 2, axis=1)
        return {"reconstruction": y.astype(np.float32), "score": score.astype(np.float32)}


def autoencoder(n_features: int = 32, hidden: int = 8, *, seed: int = 0) -> Autoencoder:
    """Build the autoencoder with seeded weights.

    Parameters
    ----------
    n_features
        Input (and reconstruction) width.
    hidden
        Bottleneck width.
    seed
        Seeds the weights, so every run builds the same model bytes.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((n_features, hidden)) / np.sqrt(n_features)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, n_features)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(n_features)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], ["reconstruction"]),
        helper.make_node("Sub", ["x", "reconstruction"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["score"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "otelai_test_autoencoder",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_features])],
        outputs=[
            helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, ["batch", n_features]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="otelai")
    model.ir_version = IR_VERSION
    return Autoencoder(w1=w1, b1=b1, w2=w2, b2=b2, onnx=model.SerializeToString())
