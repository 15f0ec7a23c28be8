import numpy as np
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otelai.detectors.log_sessions import PAD, Sessions, record_attribute
from otelai.features.otlp_layout import locate_items
from otelai.replay.logs import LogLine, log_batches


def _naive_windows(keys: list[bytes], tokens: list[int], history: int) -> np.ndarray:
    seen: dict[bytes, list[int]] = {}
    out = []
    for key, token in zip(keys, tokens, strict=True):
        past = seen.setdefault(key, []) if key else []
        out.append(([PAD] * history + past)[-history:])
        if key:
            past.append(token)
    return np.array(out, dtype=np.int64)


def test_windows_match_a_record_by_record_walk_across_batches() -> None:
    rng = np.random.default_rng(0)
    keys = [bytes([k]) if k else b"" for k in rng.integers(0, 6, 300).tolist()]
    tokens = rng.integers(3, 20, 300)
    sessions = Sessions(history=4, width=32)
    got = np.vstack([sessions.step(keys[i : i + 37], tokens[i : i + 37]) for i in range(0, 300, 37)])
    np.testing.assert_array_equal(got, _naive_windows(keys, tokens.tolist(), 4))
    closed = sessions.close([b"\x01", b"zz"])
    assert closed.keys == [b"\x01"]
    mine = [t for k, t in zip(keys, tokens.tolist(), strict=True) if k == b"\x01"]
    assert closed.counts[0].sum() == len(mine)
    np.testing.assert_array_equal(closed.windows[0], ([PAD] * 4 + mine)[-4:])
    # a closed key starts over
    assert np.all(sessions.step([b"\x01"], np.array([5]))[0] == PAD)


def test_expire_closes_idle_and_oldest_sessions() -> None:
    sessions = Sessions(history=2, width=8, max_sessions=2, idle_timeout=10.0)
    sessions.step([b"a"], np.array([3]), now=0.0)
    sessions.step([b"b"], np.array([3]), now=5.0)
    sessions.step([b"c", b"d"], np.array([3, 4]), now=12.0)
    closed = sessions.expire(now=12.0)
    assert sorted(closed.keys) == [b"a", b"b"]
    assert len(sessions) == 2
    assert sessions.close_all().keys and len(sessions) == 0


def test_record_attribute_reads_the_session_key_from_the_wire() -> None:
    lines = [
        LogLine(1, "x", {"other": "1", "BlockId": "blk_1"}),
        LogLine(2, "y", {}),
        LogLine(3, "z", {"BlockId": "blk_2"}),
    ]
    payloads = [batch.data for batch in log_batches(lines, service="s", source="t", max_items=2)]
    layout = locate_items(payloads)
    assert record_attribute(layout.buf, layout.start, layout.end, "BlockId") == [b"blk_1", b"", b"blk_2"]
    request = ExportLogsServiceRequest.FromString(payloads[0])
    request.resource_logs[0].scope_logs[0].log_records[0].trace_id = bytes(range(16))
    layout = locate_items([request.SerializeToString()])
    assert record_attribute(layout.buf, layout.start, layout.end, "trace_id") == [bytes(range(16)), b""]
