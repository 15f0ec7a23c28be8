"""The evaluation report: JSON, self-contained HTML with SVG, and the terminal table."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from otelai.models.bundle import Bundle, Manifest, save_bundle
from otelai.models.evaluation import report
from otelai.models.task import Evaluation, Timeline


def _evaluation(n: int = 5000, *, timelines: int = 2) -> Evaluation:
    rng = np.random.default_rng(3)
    labels = np.zeros(n, dtype=np.int8)
    labels[n // 3 : n // 3 + 50] = 1
    labels[n // 2 :: 97] = 1
    scores = rng.random(n) + labels * 0.6
    parts = [
        Timeline(
            name=f"machine-{i} <&>",
            time=1.7e9 + np.arange(n, dtype=np.float64) * 60,
            score=scores,
            label=labels,
            threshold=0.9,
        )
        for i in range(timelines)
    ]
    return Evaluation(
        dataset="asd",
        unit="point",
        metrics={"roc_auc": 0.91, "best_f1": 0.8, "best_f1_pa": 0.95, "best_f1_threshold": math.inf},
        scores=scores,
        labels=labels,
        references={
            "roc_auc: RRCF (source paper)": 0.75,
            "rule_error_span_roc_auc": 0.56,
            "OmniAnomaly best_f1_pa": 0.94,
            "something else": 1.5,
        },
        rows=[
            {"part": "machine-0", "f1": np.float64(0.8), "points": np.int64(n)},
            {"part": "machine-1", "f1": math.nan},
        ],
        timelines=parts,
        notes=["trained on the first half of each machine"],
    )


def _bundle(tmp_path: Path) -> Bundle:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "state.json").write_text("{}")
    return save_bundle(root, Manifest(name="asd-test", version="1.2.3", signals={}))


def test_writes_valid_json(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    files = report.write_report(_evaluation(), tmp_path / "out", bundle=bundle)
    record = json.loads(files.json.read_text())  # strict: Infinity/NaN would be refused below
    json.loads(files.json.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert record["dataset"] == "asd"
    assert record["unit"] == "point"
    assert record["items"] == 5000
    assert record["metrics"]["roc_auc"] == 0.91
    assert record["metrics"]["best_f1_threshold"] is None
    assert record["references"]["roc_auc: RRCF (source paper)"] == 0.75
    assert record["rows"][0] == {"part": "machine-0", "f1": 0.8, "points": 5000}
    assert record["rows"][1]["f1"] is None
    assert record["notes"] == ["trained on the first half of each machine"]
    assert record["bundle"]["name"] == "asd-test"
    assert record["bundle"]["version"] == "1.2.3"
    assert record["bundle"]["path"] == str(bundle.path)
    assert record["otelai_version"]
    assert record["time"]
    roc = record["curves"]["roc"]
    assert 0.5 < roc["auc"] <= 1.0
    assert len(roc["fpr"]) == len(roc["tpr"]) <= 2 * report.CURVE_GRID + 2


def test_html_is_self_contained_with_svgs(tmp_path: Path) -> None:
    files = report.write_report(_evaluation(), tmp_path / "out", bundle=None)
    page = files.html.read_text()
    assert page.count("<svg") == 4  # ROC, PR, two timelines
    assert "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert "machine-0 &lt;&amp;&gt;" in page  # names are escaped
    assert "RRCF (source paper)" in page
    assert 'class="thr"' in page and 'class="label"' in page
    start = page.index("<svg")
    while start >= 0:  # every drawing is well-formed XML
        end = page.index("</svg>", start) + len("</svg>")
        ET.fromstring(page[start:end])
        start = page.find("<svg", end)


def test_html_stays_small_on_large_data(tmp_path: Path) -> None:
    files = report.write_report(_evaluation(200_000, timelines=30), tmp_path / "out")
    assert files.html.stat().st_size < 1_500_000
    assert files.json.stat().st_size < 200_000


def test_one_class_evaluation_still_writes(tmp_path: Path) -> None:
    evaluation = Evaluation(
        dataset="nab",
        unit="point",
        metrics={"roc_auc": math.nan},
        scores=np.zeros(3),
        labels=np.zeros(3, np.int8),
    )
    files = report.write_report(evaluation, tmp_path / "out")
    assert json.loads(files.json.read_text())["curves"]["roc"]["auc"] is None
    assert "one class only" in files.html.read_text()


def test_table_pairs_references_with_metrics() -> None:
    out = io.StringIO()
    report.print_table(_evaluation(), file=out)
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == "asd: 5000 points, 76 anomalous"
    roc = next(line for line in lines if line.startswith("roc_auc"))
    assert "RRCF (source paper) 0.7500" in roc
    assert "rule_error_span 0.5600" in roc
    pa = next(line for line in lines if line.startswith("best_f1_pa"))
    assert "OmniAnomaly 0.9400" in pa
    assert any(line.startswith("(reference)") and "something else" in line for line in lines)
    assert "n/a" in text  # NaN row value
    assert "inf" in next(line for line in lines if line.startswith("best_f1_threshold"))
    assert "note: trained on the first half" in text


def test_decimate_series_keeps_spikes() -> None:
    time = np.arange(100_000, dtype=np.float64)
    values = np.zeros(100_000)
    values[54_321] = 9.0
    values[77_777] = -4.0
    t, v = report.decimate_series(time, values, 500)
    assert t.size <= 1000
    assert v.max() == 9.0 and v.min() == -4.0
    assert np.all(np.diff(t) >= 0)


def test_decimate_curve_bounds_points() -> None:
    x = np.linspace(0, 1, 100_000)
    y = np.sqrt(x)
    dx, dy = report.decimate_curve(x, y, grid=100)
    assert dx.size <= 202
    assert (dx[0], dy[0], dx[-1], dy[-1]) == (0.0, 0.0, 1.0, 1.0)
