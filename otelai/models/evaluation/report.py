"""The evaluation report: ``evaluation.json``, a self-contained ``report.html``, a terminal table.

The HTML page has no scripts and loads nothing: the ROC and PR curves and the score timelines
are inline SVG drawn here (no plotting library), decimated so a page stays a few hundred KB
whatever the size of the data set. Curves keep one point per cell of a fine grid, which loses
nothing visible on a monotone curve; timelines keep the minimum and the maximum of each pixel
column (the M4 idea of Jugel et al., "M4: A Visualization-Oriented Time Series Data
Aggregation", VLDB 2014), so a one-point spike still shows.

References are printed beside the metric they compare with: a reference whose key contains a
metric's name as a word (``"roc_auc: RRCF (source paper)"``, ``"RRCF roc_auc"``) or ends with
``_<metric>`` (``"rule_error_span_roc_auc"``) goes with that metric; the others are listed
after the metrics.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from otelai import __version__
from otelai.models.bundle import Bundle
from otelai.models.evaluation.metrics import pr_auc, pr_curve, roc_auc, roc_curve, segments
from otelai.models.task import Evaluation, Timeline

F64 = npt.NDArray[np.float64]

JSON_NAME = "evaluation.json"
HTML_NAME = "report.html"
CURVE_GRID = 1000  # curve points are kept one per 1/CURVE_GRID cell
TIMELINE_COLUMNS = 1200  # pixel columns of a timeline; two points (min, max) per column
TIMELINE_BUDGET = 40_000  # points over all timelines of a report
TABLE_ROWS = 60  # rows printed on the terminal; the files carry all of them


@dataclass(frozen=True, slots=True)
class ReportFiles:
    json: Path
    html: Path


# --- JSON -------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays to Python, NaN and infinities to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _bundle_info(bundle: Bundle | None) -> dict[str, Any] | None:
    if bundle is None:
        return None
    manifest = bundle.manifest
    return {
        "name": manifest.name,
        "version": manifest.version,
        "path": str(bundle.path),
        "created": manifest.created,
        "otelai_version": manifest.otelai_version,
    }


def report_record(evaluation: Evaluation, *, bundle: Bundle | None = None) -> dict[str, Any]:
    """What ``evaluation.json`` holds (also handy for tests and benchmarks)."""
    labels = np.asarray(evaluation.labels) != 0
    record: dict[str, Any] = _plain(
        {
            "dataset": evaluation.dataset,
            "unit": evaluation.unit,
            "items": int(labels.size),
            "anomalous": int(labels.sum()),
            "metrics": evaluation.metrics,
            "references": evaluation.references,
            "rows": evaluation.rows,
            "notes": evaluation.notes,
            "bundle": _bundle_info(bundle),
            "otelai_version": __version__,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "curves": _curves(evaluation),
        }
    )
    return record


def write_report(
    evaluation: Evaluation, out_dir: str | os.PathLike[str], *, bundle: Bundle | None = None
) -> ReportFiles:
    """Write ``evaluation.json`` and ``report.html`` into ``out_dir`` (created if needed)."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    record = report_record(evaluation, bundle=bundle)
    files = ReportFiles(root / JSON_NAME, root / HTML_NAME)
    files.json.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    files.html.write_text(render_html(evaluation, record), encoding="utf-8")
    return files


# --- the terminal table --------------------------------------------------------------------


def _number(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return "" if value is None else str(value)


def pair_references(
    metrics: Mapping[str, float], references: Mapping[str, float]
) -> tuple[dict[str, list[tuple[str, float]]], list[tuple[str, float]]]:
    """References per metric name (see the module docstring), and those that match none."""
    paired: dict[str, list[tuple[str, float]]] = {name: [] for name in metrics}
    loose: list[tuple[str, float]] = []
    by_length = sorted(metrics, key=len, reverse=True)  # "best_f1_pa" before "best_f1"
    for key, value in references.items():
        words = set(re.split(r"[^A-Za-z0-9_]+", key))
        match = next((n for n in by_length if n in words or key.endswith(f"_{n}")), None)
        if match is None:
            loose.append((key, value))
        else:
            paired[match].append((key, value))
    return paired, loose


def _reference_label(key: str, metric: str) -> str:
    """The reference's key without the metric name it was paired by."""
    name = re.escape(metric)
    label = re.sub(rf"((?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])\s*:?|_{name}$)", " ", key)
    label = " ".join(label.split()).strip(" :")
    return label or key


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return lines


def _row_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    return columns


def format_table(evaluation: Evaluation) -> str:
    """The metrics (with their references) and the per-part rows as plain text."""
    labels = np.asarray(evaluation.labels) != 0
    lines = [
        f"{evaluation.dataset}: {labels.size} {evaluation.unit}s, {int(labels.sum())} anomalous",
        "",
    ]
    paired, loose = pair_references(evaluation.metrics, evaluation.references)
    metric_rows = [
        [
            name,
            _number(value),
            "; ".join(f"{_reference_label(k, name)} {_number(v)}" for k, v in paired[name]),
        ]
        for name, value in evaluation.metrics.items()
    ]
    metric_rows += [["(reference)", _number(v), k] for k, v in loose]
    lines += _text_table(["metric", "value", "references"], metric_rows)
    if evaluation.rows:
        columns = _row_columns(evaluation.rows)
        shown = evaluation.rows[:TABLE_ROWS]
        lines += ["", *_text_table(columns, [[_number(r.get(c)) for c in columns] for r in shown])]
        if len(evaluation.rows) > len(shown):
            lines.append(f"... {len(evaluation.rows) - len(shown)} more rows in the report")
    lines += [f"note: {note}" for note in evaluation.notes]
    return "\n".join(lines)


def print_table(evaluation: Evaluation, file: TextIO | None = None) -> None:
    """Print :func:`format_table` to ``file`` (standard output by default)."""
    print(format_table(evaluation), file=file or sys.stdout)


# --- decimation ------------------------------------------------------------------------------


def decimate_curve(x: F64, y: F64, grid: int = CURVE_GRID) -> tuple[F64, F64]:
    """Keep the first point of each run in the same ``1/grid`` cell, and the last point.

    ROC and PR curves are monotone in one coordinate, so this keeps at most about ``2 * grid``
    points and moves none by more than a cell.
    """
    if x.size <= 2:
        return x, y
    cells = np.floor(np.c_[x, y] * grid)
    keep = np.r_[True, (np.diff(cells, axis=0) != 0).any(axis=1)]
    keep[-1] = True
    return x[keep], y[keep]


def decimate_series(time: F64, values: F64, columns: int) -> tuple[F64, F64]:
    """Minimum and maximum of each of ``columns`` equal-width time buckets, in time order."""
    if time.size <= 2 * columns:
        return time, values
    edges = np.linspace(time[0], time[-1], columns + 1)
    bucket = np.clip(np.searchsorted(edges, time, side="right") - 1, 0, columns - 1)
    starts = np.flatnonzero(np.r_[True, np.diff(bucket) != 0])
    lows = np.minimum.reduceat(values, starts)
    highs = np.maximum.reduceat(values, starts)
    ends = np.r_[starts[1:], time.size] - 1
    # each bucket contributes its min and its max, placed at its first and last time
    first_low = np.array(
        [values[s : e + 1].argmin() <= values[s : e + 1].argmax() for s, e in zip(starts, ends, strict=True)]
    )
    a = np.where(first_low, lows, highs)
    b = np.where(first_low, highs, lows)
    out_t = np.c_[time[starts], time[ends]].ravel()
    out_v = np.c_[a, b].ravel()
    return out_t, out_v


def _curves(evaluation: Evaluation) -> dict[str, Any]:
    """Decimated ROC and PR curves of the evaluation's scores, with their areas."""
    labels = np.asarray(evaluation.labels) != 0
    scores = np.asarray(evaluation.scores, dtype=np.float64)
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = pr_curve(labels, scores)
    if labels.size == 0 or labels.all() or not labels.any():
        fpr = tpr = precision = recall = np.zeros(0)  # no curve to draw with one class
    fpr, tpr = decimate_curve(fpr, tpr)
    recall, precision = decimate_curve(recall[::-1], precision[::-1])
    return {
        "positive_rate": float(labels.mean()) if labels.size else 0.0,
        "roc": {"auc": roc_auc(labels, scores), "fpr": fpr, "tpr": tpr},
        "pr": {"average_precision": pr_auc(labels, scores), "precision": precision, "recall": recall},
    }


# --- SVG -----------------------------------------------------------------------------------

_W, _H, _PAD = 300, 300, 40


def _points(xs: Iterable[float], ys: Iterable[float]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))


def _unit_plot(
    title: str, x: F64, y: F64, *, xlabel: str, ylabel: str, step: bool, base: float | None
) -> str:
    """A curve in the unit square with axes, labels and an optional dashed baseline."""
    size = _W - 2 * _PAD

    def px(v: npt.ArrayLike) -> F64:
        return _PAD + np.asarray(v, dtype=np.float64) * size

    def py(v: npt.ArrayLike) -> F64:
        return _PAD + (1 - np.asarray(v, dtype=np.float64)) * size

    if step and x.size:  # average precision's steps: the next precision holds up to the next recall
        x, y = np.repeat(x, 2)[:-1], np.repeat(y, 2)[1:]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">',
        f'<text x="{_W / 2}" y="20" text-anchor="middle" class="t">{html.escape(title)}</text>',
        f'<rect x="{_PAD}" y="{_PAD}" width="{size}" height="{size}" class="frame"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{px(tick):.1f}" y="{_H - _PAD + 14}" text-anchor="middle" class="s">{tick:g}</text>'
        )
        parts.append(
            f'<text x="{_PAD - 4}" y="{py(tick) + 4:.1f}" text-anchor="end" class="s">{tick:g}</text>'
        )
    parts.append(f'<text x="{_W / 2}" y="{_H - 6}" text-anchor="middle" class="s">{xlabel}</text>')
    parts.append(
        f'<text x="12" y="{_H / 2}" text-anchor="middle" class="s" transform="rotate(-90 12 {_H / 2})">{ylabel}</text>'
    )
    if base is not None:
        bx = np.array([0.0, 1.0])
        by = bx if base < 0 else np.array([base, base])
        parts.append(f'<polyline class="base" points="{_points(px(bx), py(by))}"/>')
    if x.size:
        parts.append(f'<polyline class="curve" points="{_points(px(x), py(y))}"/>')
    else:
        parts.append(f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" class="s">one class only</text>')
    parts.append("</svg>")
    return "".join(parts)


def roc_svg(fpr: F64, tpr: F64, auc: float) -> str:
    title = f"ROC (AUC {_number(auc)})"
    return _unit_plot(
        title, fpr, tpr, xlabel="false positive rate", ylabel="true positive rate", step=False, base=-1
    )


def pr_svg(precision: F64, recall: F64, average_precision: float, positive_rate: float) -> str:
    title = f"precision-recall (AP {_number(average_precision)})"
    return _unit_plot(
        title, recall, precision, xlabel="recall", ylabel="precision", step=True, base=positive_rate
    )


def _time_label(value: float) -> str:
    if value > 1e9:  # Unix seconds
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")
    return f"{value:g}"


def timeline_svg(timeline: Timeline, columns: int = TIMELINE_COLUMNS) -> str:
    """Scores over time: labelled spans shaded, the threshold dashed, min/max per pixel column."""
    width, height, left, right, top, bottom = 960, 150, 50, 10, 24, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    time = np.asarray(timeline.time, dtype=np.float64)
    score = np.asarray(timeline.score, dtype=np.float64)
    label = np.asarray(timeline.label) != 0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f'<text x="{left}" y="15" class="t">{html.escape(timeline.name)}</text>',
    ]
    if time.size == 0:
        return "".join([*parts, '<text x="50" y="60" class="s">no points</text></svg>'])
    order = np.argsort(time, kind="stable")
    time, score, label = time[order], score[order], label[order]
    finite = np.isfinite(score)
    values = score[finite] if finite.any() else np.zeros(1)
    low, high = float(values.min()), float(values.max())
    if timeline.threshold is not None and math.isfinite(timeline.threshold):
        low, high = min(low, timeline.threshold), max(high, timeline.threshold)
    if high <= low:
        high = low + 1.0
    t0, t1 = float(time[0]), float(time[-1])
    span = t1 - t0 or 1.0

    def px(t: npt.ArrayLike) -> F64:
        return left + (np.asarray(t, dtype=np.float64) - t0) / span * plot_w

    def py(v: npt.ArrayLike) -> F64:
        return top + (1 - (np.asarray(v, dtype=np.float64) - low) / (high - low)) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    # shade labelled segments, merged per pixel so a long run of short segments stays small
    pixel = np.floor(px(time) - left).astype(np.int64)
    for start, end in _merged_segments(label, pixel):
        x0 = px(time[start])
        x1 = max(float(px(time[end - 1])), float(x0) + 1.0)
        parts.append(f'<rect x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" height="{plot_h}" class="label"/>')
    shown_t, shown_v = decimate_series(time[finite], score[finite], columns)
    parts.append(f'<polyline class="score" points="{_points(px(shown_t), py(shown_v))}"/>')
    if timeline.threshold is not None and math.isfinite(timeline.threshold):
        y = float(py(timeline.threshold))
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="thr"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="s">{high:.3g}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="s">{low:.3g}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" class="s">{_time_label(t0)}</text>')
    parts.append(
        f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end" class="s">{_time_label(t1)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _merged_segments(label: npt.NDArray[np.bool_], pixel: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """Labelled segments, neighbours that start within a pixel of the last one's end merged."""
    merged: list[tuple[int, int]] = []
    for start, end in segments(label).tolist():
        if merged and pixel[start] - pixel[merged[-1][1] - 1] <= 1:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


# --- HTML ----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
table{border-collapse:collapse;margin:8px 0 20px}td,th{padding:3px 10px;border-bottom:1px solid #ddd;
text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
.t{font-size:13px;font-weight:600}.s{font-size:11px;fill:#555}.frame{fill:none;stroke:#aaa}
.curve{fill:none;stroke:#1f5fa8;stroke-width:1.6}.base{fill:none;stroke:#999;stroke-dasharray:4 3}
.score{fill:none;stroke:#1f5fa8;stroke-width:1}.label{fill:#e4572e;fill-opacity:.22}
.thr{stroke:#c0392b;stroke-dasharray:5 3}.meta{color:#555}svg{margin:4px 8px 4px 0}
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for value in row:
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            css = ' class="n"' if numeric else ""
            cells.append(f"<td{css}>{html.escape(_number(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _metrics_html(evaluation: Evaluation) -> str:
    paired, loose = pair_references(evaluation.metrics, evaluation.references)
    rows: list[list[Any]] = []
    for name, value in evaluation.metrics.items():
        refs = paired[name]
        if not refs:
            rows.append([name, value, "", ""])
        for i, (key, ref) in enumerate(refs):
            rows.append([name if i == 0 else "", value if i == 0 else "", _reference_label(key, name), ref])
    rows += [["", "", key, ref] for key, ref in loose]
    return _html_table(["metric", "value", "reference", "reference value"], rows)


def _timelines_budget(count: int) -> int:
    return max(100, min(TIMELINE_COLUMNS, TIMELINE_BUDGET // max(1, 2 * count)))


def render_html(evaluation: Evaluation, record: Mapping[str, Any]) -> str:
    """The report page for ``evaluation``; ``record`` is its :func:`report_record`."""
    esc = html.escape
    curves = record["curves"]

    def array(values: Sequence[float]) -> F64:
        return np.asarray(values, dtype=np.float64)

    def area(value: float | None) -> float:
        return math.nan if value is None else value

    roc, pr = curves["roc"], curves["pr"]
    bundle = record.get("bundle")
    meta = [
        f"{record['items']} {esc(evaluation.unit)}s, {record['anomalous']} anomalous",
        f"otelai {esc(str(record['otelai_version']))}, {esc(str(record['time']))}",
    ]
    if bundle:
        meta.append(
            f"bundle {esc(str(bundle['name']))} {esc(str(bundle['version']))} at {esc(str(bundle['path']))}"
        )
    body = [
        f"<h1>otelai evaluation: {esc(evaluation.dataset)}</h1>",
        *(f'<div class="meta">{line}</div>' for line in meta),
        "<h2>Metrics</h2>",
        _metrics_html(evaluation),
        f"<h2>Curves ({esc(evaluation.unit)} level)</h2>",
        "<div>",
        roc_svg(array(roc["fpr"]), array(roc["tpr"]), area(roc["auc"])),
        pr_svg(
            array(pr["precision"]),
            array(pr["recall"]),
            area(pr["average_precision"]),
            curves["positive_rate"],
        ),
        "</div>",
    ]
    if evaluation.timelines:
        columns = _timelines_budget(len(evaluation.timelines))
        body.append("<h2>Score timelines</h2>")
        body.append('<div class="meta">shaded: labelled anomalous; dashed: threshold</div>')
        body += [f"<div>{timeline_svg(t, columns)}</div>" for t in evaluation.timelines]
    if evaluation.rows:
        columns_ = _row_columns(evaluation.rows)
        body.append("<h2>Per part</h2>")
        body.append(_html_table(columns_, [[r.get(c) for c in columns_] for r in evaluation.rows]))
    if evaluation.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in evaluation.notes) + "</ul>")
    title = f"otelai evaluation: {esc(evaluation.dataset)}"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
