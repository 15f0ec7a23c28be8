"""A PyTorch module as an ONNX graph the service's backends accept (one batch axis)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any, cast

from otelai.detectors.pca import IR_VERSION, OPSET


def export_module(module: Any, width: int, outputs: Sequence[str]) -> bytes:
    """``module`` traced on a ``(2, width)`` input ``x``; every output gets a dynamic batch axis.

    The TorchScript exporter is used because it needs no onnxscript; the IR version is set
    explicitly because newer onnx writes versions some runtimes refuse.
    """
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy
        torch.onnx.export(
            module,
            (torch.zeros(2, width),),
            cast(Any, buffer),  # a file object works; the stubs only name paths
            dynamo=False,
            input_names=["x"],
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in ["x", *outputs]},
            opset_version=OPSET,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = IR_VERSION
    model.producer_name = "otelai"
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
