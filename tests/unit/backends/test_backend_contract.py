"""The contract every registered backend keeps, run over each one that is usable here.

A backend whose probe says it cannot run here is skipped with the probe's reason, so a machine
with a GPU runs the GPU backends through the same contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from otelai.backends import Backend, BackendUnavailable, backend_class, installed_backends
from otelai.backends.testing import Autoencoder, autoencoder

BUILTINS = {"onnxruntime", "openvino", "cuda", "tensorrt_ep", "tensorrt", "torch_cuda"}
CPU_BACKENDS = ("onnxruntime", "openvino")
#: (rtol, atol) against the float64 reference, by the backend's default precision.
TOLERANCE = {"fp32": (1e-5, 1e-5), "tf32": (1e-2, 1e-2), "fp16": (1e-2, 1e-2)}


@pytest.fixture(scope="module")
def model() -> Autoencoder:
    return autoencoder(n_features=32, hidden=8, seed=0)


def usable(name: str) -> type[Backend]:
    cls = backend_class(name)
    reason = cls.probe()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return cls


@pytest.fixture(scope="module", params=sorted(installed_backends()))
def backend(request: pytest.FixtureRequest, model: Autoencoder) -> Iterator[Backend]:
    cls = usable(request.param)
    with cls(model.onnx) as built:
        yield built


def batch(rows: int, *, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 32)).astype(np.float32)


def test_every_builtin_is_registered() -> None:
    assert set(installed_backends()) >= BUILTINS


@pytest.mark.parametrize("name", sorted(installed_backends()))
def test_probe_answers_without_raising(name: str) -> None:
    reason = backend_class(name).probe()
    assert reason is None or (reason.strip() and "\n" not in reason)


def test_names_and_shapes(backend: Backend) -> None:
    assert backend.input_names == ("x",)
    assert backend.output_names == ("reconstruction", "score")
    assert backend.input_shapes == {"x": (None, 32)}


@pytest.mark.parametrize("rows", [1, 7, 512])
def test_dynamic_batch_matches_reference(backend: Backend, model: Autoencoder, rows: int) -> None:
    x = batch(rows)
    out = backend.run({"x": x})
    ref = model.reference(x)
    assert set(out) == {"reconstruction", "score"}
    assert out["reconstruction"].dtype == np.float32 and out["reconstruction"].shape == (rows, 32)
    assert out["score"].dtype == np.float32 and out["score"].shape == (rows,)
    rtol, atol = TOLERANCE[backend.precision]
    for name in ref:
        np.testing.assert_allclose(out[name], ref[name], rtol=rtol, atol=atol)


def test_deterministic(backend: Backend) -> None:
    x = batch(64, seed=2)
    first, second = backend.run({"x": x}), backend.run({"x": x})
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_outputs_belong_to_the_caller(backend: Backend) -> None:
    first = backend.run({"x": batch(16, seed=3)})
    kept = {name: array.copy() for name, array in first.items()}
    backend.run({"x": batch(16, seed=4)})
    for name in first:
        np.testing.assert_array_equal(first[name], kept[name])


def test_converts_other_float_inputs(backend: Backend) -> None:
    x = batch(8, seed=5)
    wide: Any = np.asfortranarray(x.astype(np.float64))  # run converts, though typed float32
    np.testing.assert_array_equal(backend.run({"x": wide})["score"], backend.run({"x": x})["score"])


def test_missing_input_is_an_error(backend: Backend) -> None:
    with pytest.raises(ValueError, match="missing inputs"):
        backend.run({"y": batch(2)})


@pytest.mark.parametrize("name", sorted(installed_backends()))
def test_close_is_idempotent_and_final(name: str, model: Autoencoder) -> None:
    built = usable(name)(model.onnx)
    built.close()
    built.close()
    with pytest.raises(RuntimeError, match="closed"):
        built.run({"x": batch(2)})


@pytest.mark.parametrize("name", sorted(installed_backends()))
def test_loads_from_a_path(name: str, model: Autoencoder, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(model.onnx)
    with usable(name)(path) as built:
        assert built.run({"x": batch(3)})["score"].shape == (3,)


@pytest.mark.parametrize("name", sorted(installed_backends()))
@pytest.mark.parametrize("broken", [b"not an onnx model", b""], ids=["garbage", "empty"])
def test_broken_model_is_unavailable(name: str, broken: bytes) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        usable(name)(broken)
    assert caught.value.backend == name


@pytest.mark.parametrize("name", sorted(installed_backends()))
def test_missing_model_file_is_unavailable(name: str, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="cannot read model"):
        usable(name)(tmp_path / "absent.onnx")


@pytest.mark.parametrize("name", sorted(installed_backends()))
def test_unknown_option_is_a_configuration_error(name: str) -> None:
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        backend_class(name).validate_options({"bogus": 1})


def test_cpu_backends_agree(model: Autoencoder) -> None:
    available = [name for name in CPU_BACKENDS if backend_class(name).probe() is None]
    if len(available) < 2:
        pytest.skip(f"fewer than two CPU backends usable here: {available}")
    x = batch(512, seed=6)
    scores = {}
    for name in available:
        with backend_class(name)(model.onnx) as built:
            scores[name] = built.run({"x": x})["score"]
    first, *others = available
    for name in others:
        np.testing.assert_allclose(scores[name], scores[first], rtol=1e-5, atol=1e-6)
