from pathlib import Path

import numpy as np

from otelai.detectors.log_sequence import END, FIRST, PAD, UNKNOWN, LogSequenceDetector


def _session_rows(sessions: list[list[int]], history: int, severity: int = 9) -> np.ndarray:
    rows = []
    for tokens in sessions:
        padded = [PAD] * history + tokens + [END]
        for i in range(len(tokens) + 1):
            rows.append([*padded[i : i + history], padded[i + history], severity if i < len(tokens) else 0])
    return np.array(rows, dtype=np.float32)


def _fitted(history: int = 3) -> LogSequenceDetector:
    a, b, c, d = FIRST, FIRST + 1, FIRST + 2, FIRST + 3
    normal = [[a, b, c, d], [a, b, c, c, d], [a, b, b, c, d]] * 30
    detector = LogSequenceDetector(history=history)
    detector.learn_many(_session_rows(normal, history))
    return detector


def test_expected_events_score_low_and_broken_order_or_unseen_templates_high() -> None:
    detector = _fitted()
    a, b, c, d = FIRST, FIRST + 1, FIRST + 2, FIRST + 3
    normal = detector.score_many(_session_rows([[a, b, c, d]], 3))
    reordered = detector.score_many(_session_rows([[a, d, c, b]], 3))
    unseen = detector.score_many(_session_rows([[a, b, UNKNOWN, d]], 3))
    assert normal.max() < 2.0
    assert reordered.max() > normal.max() + 3.0
    assert unseen.max() > normal.max() + 3.0
    # a session that stops early: the end-of-session event is the surprise
    early = detector.score_many(_session_rows([[a, b]], 3))
    assert early[-1] > normal.max() + 3.0


def test_rare_severity_adds_surprise_and_is_named() -> None:
    detector = _fitted()
    a, b, c, d = FIRST, FIRST + 1, FIRST + 2, FIRST + 3
    info = _session_rows([[a, b, c, d]], 3, severity=9)
    fatal = info.copy()
    fatal[:-1, -1] = 21
    info_scores = detector.score_many(info)
    fatal_scores, reasons = detector.score_explain_many(fatal, top=2)
    assert np.all(fatal_scores[:-1] > info_scores[:-1] + 2.0)
    assert reasons[0, 0] == detector.width - 1  # the severity column


def test_online_learning_makes_a_new_pattern_expected() -> None:
    detector = _fitted()
    a, e = FIRST, FIRST + 7
    rows = _session_rows([[a, e]], 3)
    before = detector.score_many(rows)
    detector.learn_many(_session_rows([[a, e]] * 50, 3))
    after = detector.score_many(rows)
    assert detector.vocabulary >= e + 1
    assert after.max() < before.max() - 3.0


def test_saved_state_scores_the_same(tmp_path: Path) -> None:
    detector = _fitted()
    rows = _session_rows([[FIRST, FIRST + 2, FIRST + 1, UNKNOWN]], 3)
    detector.save(tmp_path / "model.npz")
    loaded = LogSequenceDetector.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(loaded.score_many(rows), detector.score_many(rows))


def test_untrained_detector_scores_zero() -> None:
    detector = LogSequenceDetector(history=2)
    assert not detector.ready
    assert np.all(detector.score_many(np.zeros((3, 4), dtype=np.float32)) == 0)
