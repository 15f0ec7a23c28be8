"""Backend selection: ordered fallback at start-up, clean errors, and run-time fallback."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from otelai.backends import (
    BackendUnavailable,
    FallbackBackend,
    NoBackendAvailable,
    backend_class,
    load_backend,
    probe_all,
)
from otelai.backends.testing import IR_VERSION, OPSET, Autoencoder, autoencoder

GPU_FIRST = ["tensorrt", "cuda", "openvino", "onnxruntime"]


@pytest.fixture(scope="module")
def model() -> Autoencoder:
    return autoencoder()


def probe(name: str) -> str | None:
    return backend_class(name).probe()


def require(*names: str) -> None:
    for name in names:
        reason = probe(name)
        if reason is not None:
            pytest.skip(f"{name}: {reason}")


def single_node_model(op: str, output_type: int, **attrs: Any) -> bytes:
    """x (batch, 4) -> one ``op`` node -> y: tiny models that load but misbehave."""
    extra = []
    inputs = ["x"]
    if op == "Reshape":
        extra = [helper.make_tensor("shape", TensorProto.INT64, [2], [3, -1])]
        inputs.append("shape")
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"], **attrs)],
        "misbehaving",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("y", output_type, None)],
        initializer=extra,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    return proto.SerializeToString()


def test_falls_back_through_the_order_with_one_line_and_callback_each(
    model: Autoencoder, caplog: pytest.LogCaptureFixture
) -> None:
    reasons = {name: probe(name) for name in GPU_FIRST}
    usable = [name for name in GPU_FIRST if reasons[name] is None]
    if not usable:
        pytest.skip("no backend of the order is usable here")
    chosen = usable[0]
    skipped = GPU_FIRST[: GPU_FIRST.index(chosen)]
    calls: list[tuple[str, str, str]] = []
    with caplog.at_level(logging.WARNING, logger="otelai.backends"):
        backend = load_backend(GPU_FIRST, model.onnx, on_fallback=lambda *call: calls.append(call))
    with backend:
        assert backend.name == chosen
        assert backend.run({"x": np.ones((3, 32), np.float32)})["score"].shape == (3,)
    expected = [(name, GPU_FIRST[i + 1], reasons[name]) for i, name in enumerate(skipped)]
    assert calls == expected
    lines = [r.getMessage() for r in caplog.records if r.name == "otelai.backends"]
    assert len(lines) == len(skipped)
    for (source, target, reason), line in zip(expected, lines, strict=True):
        assert source in line and target in line and str(reason) in line


def test_cpu_only_machine_lands_on_openvino() -> None:
    if probe("tensorrt") is None or probe("cuda") is None:
        pytest.skip("a GPU backend is usable here")
    require("openvino")
    with load_backend(GPU_FIRST, autoencoder().onnx) as backend:
        assert backend.name == "openvino"


def test_broken_model_fails_every_backend_with_all_reasons(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str, str]] = []
    with (
        caplog.at_level(logging.WARNING, logger="otelai.backends"),
        pytest.raises(NoBackendAvailable) as caught,
    ):
        load_backend(GPU_FIRST, b"not an onnx model", on_fallback=lambda *call: calls.append(call))
    assert list(caught.value.reasons) == GPU_FIRST
    for name in GPU_FIRST:
        reason = probe(name)
        if reason is None:
            assert "cannot load model" in caught.value.reasons[name]
        else:
            assert caught.value.reasons[name] == reason
        assert name in str(caught.value)
    assert [call[:2] for call in calls] == list(itertools.pairwise(GPU_FIRST))
    assert any(r.levelno == logging.ERROR and "no backend left" in r.getMessage() for r in caplog.records)


def test_model_that_fails_at_run_time_is_caught_by_the_smoke_batch() -> None:
    require("onnxruntime")
    # Loads fine; reshaping 2x4 values into rows of 3 fails only when run.
    broken = single_node_model("Reshape", TensorProto.FLOAT)
    with pytest.raises(NoBackendAvailable, match="smoke run failed"):
        load_backend(["onnxruntime"], broken)


def test_smoke_batch_rejects_non_float32_outputs() -> None:
    require("onnxruntime")
    as_int = single_node_model("Cast", TensorProto.INT64, to=TensorProto.INT64)
    with pytest.raises(NoBackendAvailable, match="int64"):
        load_backend(["onnxruntime"], as_int)


def test_unknown_backend_lists_the_installed_ones(model: Autoencoder) -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'.*onnxruntime.*openvino"):
        load_backend(["tpu", "onnxruntime"], model.onnx)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        load_backend(["onnxruntime"], model.onnx, options={"tpu": {}})
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        backend_class("tpu")


def test_configuration_errors_surface_even_for_unusable_backends(model: Autoencoder) -> None:
    with pytest.raises(ValueError, match="twice"):
        load_backend(["onnxruntime", "onnxruntime"], model.onnx)
    with pytest.raises(ValueError, match="empty"):
        load_backend([], model.onnx)
    with pytest.raises(ValueError, match="unknown option 'fp17'"):
        load_backend(["tensorrt", "onnxruntime"], model.onnx, options={"tensorrt": {"fp17": True}})
    with pytest.raises(ValueError, match="graph_optimization_level"):
        load_backend(
            ["onnxruntime"], model.onnx, options={"onnxruntime": {"graph_optimization_level": "max"}}
        )


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_onnxruntime_options_apply(model: Autoencoder, level: str) -> None:
    require("onnxruntime")
    opts = {"onnxruntime": {"graph_optimization_level": level, "intra_op_num_threads": 2}}
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    with load_backend(["onnxruntime"], model.onnx, options=opts) as backend:
        np.testing.assert_allclose(backend.run({"x": x})["score"], model.reference(x)["score"], rtol=1e-5)


def test_openvino_precision_option(model: Autoencoder) -> None:
    require("openvino")
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    with load_backend(["openvino"], model.onnx, options={"openvino": {"precision": "bf16"}}) as backend:
        # bf16 keeps 8 mantissa bits: close to the reference, not within the f32 tolerance.
        np.testing.assert_allclose(backend.run({"x": x})["score"], model.reference(x)["score"], rtol=0.1)


def test_a_failing_callback_does_not_stop_selection(model: Autoencoder) -> None:
    require("onnxruntime")
    if probe("tensorrt") is None:
        pytest.skip("tensorrt is usable here: no fallback happens")

    def explode(source: str, target: str, reason: str) -> None:
        raise RuntimeError("metrics are down")

    with load_backend(["tensorrt", "onnxruntime"], model.onnx, on_fallback=explode) as backend:
        assert backend.name == "onnxruntime"


def test_probe_all_gives_a_reason_for_each_unusable_backend() -> None:
    probes = probe_all()
    assert {"onnxruntime", "openvino", "cuda", "tensorrt_ep", "tensorrt", "torch_cuda"} <= set(probes)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert probes["torch_cuda"] == "torch is not installed"


def test_run_time_fallback_after_consecutive_failures(model: Autoencoder) -> None:
    require("onnxruntime", "openvino")
    calls: list[tuple[str, str, str]] = []
    x = np.ones((4, 32), np.float32)
    with FallbackBackend(
        ["onnxruntime", "openvino"],
        model.onnx,
        on_fallback=lambda *call: calls.append(call),
        max_consecutive_failures=2,
    ) as backend:
        primary = backend.current
        assert primary.name == "onnxruntime"
        primary.close()  # a real failure: every run on it now raises
        for _ in range(2):
            with pytest.raises(RuntimeError, match="closed"):
                backend.run({"x": x})
        assert backend.current.name == "openvino"
        assert calls and calls[0][:2] == ("onnxruntime", "openvino")
        assert "2 consecutive run failures" in calls[0][2]
        np.testing.assert_allclose(backend.run({"x": x})["score"], model.reference(x)["score"], rtol=1e-5)


def test_run_time_success_resets_the_failure_count(model: Autoencoder) -> None:
    require("onnxruntime")
    require("openvino")
    calls: list[tuple[str, str, str]] = []
    good = np.ones((2, 32), np.float32)
    too_wide = np.ones((2, 33), np.float32)  # the runtime refuses it: a run-time failure
    with FallbackBackend(
        ["onnxruntime", "openvino"],
        model.onnx,
        max_consecutive_failures=2,
        on_fallback=lambda *call: calls.append(call),
    ) as backend:
        for _ in range(3):
            with pytest.raises(Exception) as caught:
                backend.run({"x": too_wide})
            assert not isinstance(caught.value, ValueError)
            backend.run({"x": good})
        for _ in range(5):  # the caller's own mistakes do not count
            with pytest.raises(ValueError, match="missing inputs"):
                backend.run({"wrong": good})
        assert backend.current.name == "onnxruntime"
        assert calls == []


def test_run_time_fallback_keeps_the_last_backend_when_none_is_left(
    model: Autoencoder, caplog: pytest.LogCaptureFixture
) -> None:
    require("onnxruntime")
    with FallbackBackend(["onnxruntime"], model.onnx, max_consecutive_failures=1) as backend:
        primary = backend.current
        primary.close()
        with caplog.at_level(logging.ERROR, logger="otelai.backends"):
            for _ in range(3):
                with pytest.raises(RuntimeError):
                    backend.run({"x": np.ones((2, 32), np.float32)})
        assert backend.current is primary
        assert caplog.text.count("no backend is left") == 1


def test_backend_unavailable_carries_name_and_reason() -> None:
    err = BackendUnavailable("openvino", "no device")
    assert (err.backend, err.reason, str(err)) == ("openvino", "no device", "openvino: no device")
