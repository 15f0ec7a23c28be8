"""The configuration the Helm chart renders is accepted by the real ``otelai validate``.

One CLI run per distinct rendered configuration (the chart's scenarios share most of theirs),
in the environment the chart gives the container; and a value the chart's schema cannot know
to be wrong is refused by the CLI, naming the key.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ..unit.deploy.chart_render import POD_ENV, Chart, ci_values, merge
from ..unit.deploy.collector_configs import otelai_values_files
from .service import otelai_command

pytestmark = pytest.mark.slow


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **POD_ENV}
    return subprocess.run(
        otelai_command("validate", "--config", str(path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_every_rendered_config_passes_otelai_validate(tmp_path: Path) -> None:
    topology = otelai_values_files()
    scenarios = {"default": {}, **ci_values()}
    scenarios["otelai-values"] = topology["otelai-values"]
    scenarios["otelai-tail-sampling"] = merge(
        topology["otelai-values"], topology["otelai-tail-sampling-values"]
    )
    chart = Chart()
    try:
        texts = {name: chart.render(values).config_text() for name, values in scenarios.items()}
    finally:
        chart.close()
    distinct: dict[str, str] = {}
    for name, text in sorted(texts.items()):
        distinct.setdefault(text, name)
    assert len(distinct) >= 3  # default, GPU backends, the edge latency target, the topology
    for text, name in distinct.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        result = _validate(path)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "valid" in result.stdout


def test_a_value_the_chart_cannot_judge_is_refused_by_the_cli(tmp_path: Path) -> None:
    chart = Chart()
    try:
        text = chart.render({"config": {"selection": {"normal_sample_rate": 2.0}}}).config_text()
    finally:
        chart.close()
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _validate(path)
    assert result.returncode == 2
    assert "selection.normal_sample_rate" in result.stderr
