"""Training of the isolation-forest detector in scikit-learn, converted to ONNX with skl2onnx.

Liu, Ting & Zhou, "Isolation Forest" (ICDM 2008). The converted forest outputs scikit-learn's
``decision_function`` (``score_samples - offset_``); nodes appended to the graph turn it into
``score = -score_samples`` of shape ``[batch]`` (high = anomalous), the output every bundled
detector has (:class:`otelai.detectors.isolation_forest.IsolationForestDetector`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from otelai.detectors.pca import IR_VERSION, OPSET

F32 = npt.NDArray[np.float32]
ML_OPSET = 3  # ai.onnx.ml TreeEnsemble operators


@dataclass(frozen=True)
class ForestSettings:
    """Forest size; small trees keep the graph small (about 8 kB a tree at 256 samples)."""

    n_estimators: int = 100
    max_samples: int = 256
    max_features: float = 1.0


@dataclass(frozen=True)
class TrainedForest:
    """A trained forest: its ONNX graph, statistics for explanations, the scikit-learn model."""

    onnx: bytes
    mean: F32
    scale: F32
    settings: ForestSettings
    model: Any = field(repr=False)

    def score(self, rows: npt.ArrayLike) -> F32:
        """Scores computed by scikit-learn (the graph must agree)."""
        result: F32 = (-self.model.score_samples(np.asarray(rows, dtype=np.float32))).astype(np.float32)
        return result

    @property
    def params(self) -> dict[str, Any]:
        s = self.settings
        return {
            "n_features": len(self.mean),
            "n_estimators": s.n_estimators,
            "max_samples": s.max_samples,
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
        }


def train_isolation_forest(
    rows: npt.ArrayLike, *, settings: ForestSettings | None = None, seed: int = 0, min_scale: float = 0.1
) -> TrainedForest:
    """Fit a forest on ``rows`` (normal feature rows) and convert it."""
    from sklearn.ensemble import IsolationForest  # type: ignore[import-untyped]

    settings = settings or ForestSettings()
    data = np.asarray(rows, dtype=np.float32)
    if data.ndim != 2 or len(data) < 2:
        raise ValueError(f"need a 2-D array of at least two rows, got shape {data.shape}")
    forest = IsolationForest(
        n_estimators=settings.n_estimators,
        max_samples=min(settings.max_samples, len(data)),
        max_features=settings.max_features,
        random_state=seed,
    ).fit(data)
    return TrainedForest(
        onnx=export_onnx(forest, data.shape[1]),
        mean=data.mean(axis=0).astype(np.float32),
        scale=np.maximum(data.std(axis=0), min_scale).astype(np.float32),
        settings=settings,
        model=forest,
    )


def export_onnx(forest: Any, width: int) -> bytes:
    """The forest as an ONNX graph: input ``x`` [batch, width], output ``score`` [batch]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import to_onnx  # type: ignore[import-untyped]
    from skl2onnx.common.data_types import FloatTensorType  # type: ignore[import-untyped]

    converted = to_onnx(
        forest,
        initial_types=[("x", FloatTensorType([None, width]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    graph = converted.graph
    decision = next(output.name for output in graph.output if output.name != "label")
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([float(forest.offset_)], dtype=np.float32), "otelai_offset"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "otelai_flat"),
        ]
    )
    # decision_function = score_samples - offset_, so -score_samples = -(decision + offset_)
    graph.node.extend(
        [
            helper.make_node("Add", [decision, "otelai_offset"], ["otelai_samples"]),
            helper.make_node("Neg", ["otelai_samples"], ["otelai_negated"]),
            helper.make_node("Reshape", ["otelai_negated", "otelai_flat"], ["score"]),
        ]
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]))
    converted.ir_version = IR_VERSION
    converted.producer_name = "otelai"
    onnx.checker.check_model(converted)
    data: bytes = converted.SerializeToString()
    return data
