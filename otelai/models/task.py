"""Training and evaluation, one :class:`Task` per data set kind (``otelai train`` / ``evaluate``).

A task reads its data set from a directory (never bundled with otelai), trains the detectors
of one signal, writes a bundle (:mod:`otelai.models.bundle`), and evaluates a bundle through
the same code the service runs: the bundle loader, the feature extractors and the inference
backend. Tasks are looked up by kind in :data:`TASKS` and imported lazily, since training
needs the optional ``train`` extra (PyTorch, scikit-learn).
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from otelai.models.bundle import Bundle

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Timeline:
    """Scores over time of one part of the data set (a series, a machine), for the report."""

    name: str
    time: F64  # seconds (Unix) or step index
    score: F64
    label: npt.NDArray[np.int8]
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What ``otelai evaluate`` prints, writes to JSON and draws in the report.

    ``scores``/``labels`` are per evaluated unit (a window, a point, a block, a line) and give
    the ROC and PR curves; ``metrics`` are the headline numbers; ``references`` are the
    published or rule baselines printed beside them; ``rows`` a per-part table.
    """

    dataset: str
    unit: str  # "window", "point", "block", "line"
    metrics: dict[str, float]
    scores: F64
    labels: npt.NDArray[np.int8]
    references: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    timelines: list[Timeline] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Task(abc.ABC):
    """Train and evaluate the detectors of one data set kind."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def train(self, path: Path, out: Path, *, seed: int = 0, progress: bool = True) -> Bundle:
        """Train on the data set at ``path`` (its training part), write a bundle to ``out``."""

    @abc.abstractmethod
    def evaluate(self, bundle: Bundle, path: Path, *, progress: bool = True) -> Evaluation:
        """Score the held-out part of the data set at ``path`` with ``bundle``."""


# kind -> "module:Class"; imported on first use.
TASKS: dict[str, str] = {
    "otel-demo": "otelai.models.tasks.otel_demo:OtelDemoTask",
    "nab": "otelai.models.tasks.nab:NabTask",
    "asd": "otelai.models.tasks.server_metrics:AsdTask",
    "smd": "otelai.models.tasks.server_metrics:SmdTask",
    "hdfs": "otelai.models.tasks.hdfs:HdfsTask",
    "bgl": "otelai.models.tasks.bgl:BglTask",
}


def get_task(kind: str) -> Task:
    """The task for data set ``kind``; ValueError naming the known kinds if there is none."""
    if kind not in TASKS:
        raise ValueError(f"unknown data set kind {kind!r}; known: {', '.join(TASKS)}")
    module_name, _, class_name = TASKS[kind].partition(":")
    task_class = getattr(importlib.import_module(module_name), class_name)
    task: Task = task_class()
    return task
