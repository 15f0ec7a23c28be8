"""The container images' recipes, checked without a container engine (none runs here):
pinned bases, a non-root numeric user, the service's ports and entry point, every copied file
present and sent by .dockerignore, and the runtime requirements the images install matching
what the tests run. hadolint lints both files in tests/integration/test_deploy_dockerfiles.py.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .dockerfiles import DOCKERFILES, ROOT, dockerignore_allows, instructions

RUNTIME = ROOT / "requirements" / "runtime.txt"
GPU = ROOT / "requirements" / "gpu.txt"


def _pins(path: Path) -> dict[str, str]:
    assert path.exists(), f"{path.relative_to(ROOT)} is missing (the Dockerfiles install it)"
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _arg_defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(arg.split("=", 1) for keyword, arg in steps if keyword == "ARG" and "=" in arg)


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_bases_are_pinned_versions(variant: str) -> None:
    steps = instructions(DOCKERFILES[variant])
    args = _arg_defaults(steps)
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], arg.split()[0]) for k, arg in steps if k == "FROM"
    ]
    assert len(bases) == 2  # a build stage and a runtime stage, on the same base
    assert len(set(bases)) == 1
    repository, _, tag = bases[0].partition(":")
    assert re.match(r"\d+\.\d+\.\d+-", tag), bases[0]  # a full version, never latest
    if variant == "cpu":
        assert repository == "python" and tag.startswith("3.11.") and "slim" in tag
    else:
        assert repository == "nvidia/cuda" and "cudnn-runtime" in tag


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_runs_otelai_as_a_non_root_user_on_its_ports(variant: str) -> None:
    steps = instructions(DOCKERFILES[variant])
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [arg for keyword, arg in final if keyword == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert users[-1] == "10001:10001"  # the chart's runAsUser / runAsGroup
    exposed = {port for keyword, arg in final if keyword == "EXPOSE" for port in arg.split()}
    assert exposed == {"4317", "4318", "9464"}
    entry = [arg for keyword, arg in final if keyword == "ENTRYPOINT"]
    cmd = [arg for keyword, arg in final if keyword == "CMD"]
    assert entry == ['["otelai"]'] and cmd == ['["serve"]']


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_copied_files_exist_and_reach_the_build_context(variant: str) -> None:
    for keyword, arg in instructions(DOCKERFILES[variant]):
        if keyword != "COPY" or arg.startswith("--from"):
            continue
        *sources, _dest = shlex.split(arg)
        for source in sources:
            assert (ROOT / source).exists(), f"{DOCKERFILES[variant].name}: COPY {source}: no such file"
            assert dockerignore_allows(source), f".dockerignore keeps {source} out of the build context"


def test_gpu_image_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    text = DOCKERFILES["gpu"].read_text()
    assert "grep -v '^onnxruntime=='" in text
    gpu = _pins(GPU)
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert gpu["onnxruntime-gpu"] == _pins(RUNTIME)["onnxruntime"]  # same ORT release as CPU


def test_runtime_requirements_pin_what_the_tests_run() -> None:
    pins = _pins(RUNTIME)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert declared - set(pins) == set(), "pyproject dependencies missing from requirements/runtime.txt"
    for name, version in pins.items():
        try:
            installed = distribution(name)
        except PackageNotFoundError:
            pytest.fail(f"runtime.txt pins {name}, which this environment does not have")
        assert installed.version == version, f"{name}: runtime.txt {version}, tested {installed.version}"
        # Closed under dependencies: --no-deps installs nothing else.
        for requirement in installed.requires or []:
            req = Requirement(requirement)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert canonicalize_name(req.name) in pins, f"{name} needs {req.name}, not in runtime.txt"
    # Development tools stay out of the image.
    assert not {"pytest", "mypy", "ruff", "hypothesis", "openvino", "torch"} & set(pins)
