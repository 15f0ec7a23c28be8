"""Pieces of the GPU backends that run without their runtime, or on any CUDA device."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.backends.cuda_memory import cuda_context, cuda_missing
from otelai.backends.ort_tensorrt import profile_shapes


def test_profile_shapes_fill_in_the_batch() -> None:
    assert profile_shapes({"x": (None, 32), "m": (None, 4, 2)}, 64) == "x:64x32,m:64x4x2"


def test_profile_shapes_refuse_other_dynamic_dimensions() -> None:
    with pytest.raises(ValueError, match="dynamic non-batch"):
        profile_shapes({"x": (None, None)}, 1)


@pytest.mark.parametrize("prefer", ["torch", "cuda-python"])
def test_device_buffers_round_trip(prefer: str) -> None:
    reason = cuda_missing()
    if reason is not None:
        pytest.skip(reason)
    module = "torch" if prefer == "torch" else "cuda.bindings"
    pytest.importorskip(module)
    ctx = cuda_context(0, prefer=prefer)
    try:
        assert ctx.device_name
        assert isinstance(ctx.stream, int)
        buf = ctx.buffer(1024)
        data = np.arange(96, dtype=np.float32).reshape(6, 16)
        buf.upload(data)
        np.testing.assert_array_equal(buf.download((6, 16)), data)
        assert buf.ptr != 0
    finally:
        ctx.close()
        ctx.close()
