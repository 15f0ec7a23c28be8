"""The ``otelai`` command: serve, validate, replay, train, evaluate.

Exit codes: 0 success, 2 bad usage or configuration (for ``train``/``evaluate`` also: unknown
data set kind, missing data path, a bundle refused by the loader or built for other features,
the optional ``train`` extra not installed), 3 the service failed to start, 4 replay could not
deliver everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from otelai import __version__
from otelai.config import ConfigError, load_config

EXIT_CONFIG = 2
EXIT_START = 3
EXIT_REPLAY = 4

if TYPE_CHECKING:
    from otelai.models.task import Task

# modules of the optional ``train`` extra: a task that needs one gets an install hint
_TRAIN_EXTRA = {"torch", "sklearn", "skl2onnx"}
_TRAIN_HINT = (
    "install the `train` extra: pip install 'otelai[train]' and the CPU build of PyTorch: "
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otelai", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"otelai {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--config", help="YAML configuration (default: the embedded default)")

    validate = commands.add_parser("validate", help="check a configuration file")
    validate.add_argument("--config", required=True)

    replay = commands.add_parser("replay", help="send a data set as OTLP to an endpoint")
    replay.add_argument("--dataset", required=True, help="otel-demo")
    replay.add_argument("--path", required=True, type=Path)
    replay.add_argument("--endpoint", required=True, help="HOST:PORT (gRPC) or URL (HTTP)")
    replay.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    replay.add_argument("--header", action="append", default=[], help="KEY=VALUE, repeatable")
    replay.add_argument("--speed", type=float, default=None, help="replay at N x the recorded pace")
    replay.add_argument("--no-progress", action="store_true")

    from otelai.models.task import TASKS

    kinds = ", ".join(TASKS)
    train = commands.add_parser("train", help="train a model bundle on a data set")
    train.add_argument("--dataset", required=True, help=kinds)
    train.add_argument("--path", required=True, type=Path, help="the data set directory")
    train.add_argument("--out", required=True, type=Path, help="bundle directory to write")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", action="store_true")

    evaluate = commands.add_parser("evaluate", help="score a data set with a bundle and write a report")
    evaluate.add_argument("--bundle", required=True, type=Path)
    evaluate.add_argument("--dataset", required=True, help=kinds)
    evaluate.add_argument("--path", required=True, type=Path, help="the data set directory")
    evaluate.add_argument(
        "--out", type=Path, help="report directory (default: next to the bundle, report-KIND)"
    )
    evaluate.add_argument("--no-progress", action="store_true")
    return parser


def _serve(config_path: str | None) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"otelai: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from otelai.logs import configure_logging
    from otelai.service import Service, StartupError

    configure_logging(config.telemetry.logs.level, config.telemetry.logs.encoding)
    try:
        asyncio.run(Service(config).run())
    except StartupError as exc:
        print(f"otelai: {exc}", file=sys.stderr)
        return EXIT_START
    return 0


def _validate(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"otelai: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{config_path}: valid ({len(config.exporters)} exporters: {', '.join(config.exporters)})")
    return 0


def _replay(args: argparse.Namespace) -> int:
    headers = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"otelai: --header expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_CONFIG
        headers[key] = value
    from otelai.logs import configure_logging
    from otelai.replay import replay

    configure_logging("info", "console")
    try:
        stats = asyncio.run(
            replay(
                args.dataset,
                args.path,
                args.endpoint,
                protocol=args.protocol,
                headers=headers,
                speed=args.speed,
                progress=not args.no_progress,
            )
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"otelai: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"sent {stats.requests} requests, {stats.items} items, {stats.bytes} bytes; "
        f"failed requests: {stats.failures}, rejected items: {stats.rejected}, skipped sources: {stats.skipped}"
    )
    return EXIT_REPLAY if stats.failures or stats.skipped else 0


def _fail(message: str) -> int:
    print(f"otelai: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _missing_module(exc: ModuleNotFoundError, kind: str) -> str:
    """Why a task could not run for lack of a module, and what to install."""
    top = (exc.name or "").partition(".")[0]
    if top in _TRAIN_EXTRA:
        return f"data set {kind!r} needs {top!r}, which is not installed; {_TRAIN_HINT}"
    return f"data set {kind!r} cannot run here: {exc}"


def _task(kind: str, path: Path) -> Task | str:
    """The task for ``kind`` after checking the data path, or why there is none."""
    from otelai.models.task import TASKS, get_task

    if kind not in TASKS:
        return f"unknown data set kind {kind!r}; known: {', '.join(TASKS)}"
    if not path.exists():
        return f"data path {path} does not exist (the {kind} data set directory)"
    try:
        return get_task(kind)
    except ModuleNotFoundError as exc:
        return _missing_module(exc, kind)


def _size(directory: Path) -> tuple[int, int]:
    files = [p for p in directory.iterdir() if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _staging_dir(out: Path) -> Path | str:
    """An empty directory beside ``out`` to train into, or why ``out`` may not be replaced.

    Training into a fresh directory and renaming it over ``out`` at the end means a failed
    run leaves the previous bundle intact and a bundle never lists a stale file of an older one.
    """
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a bundle directory"
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        return f"--out {out} is a directory with files that is not a bundle; refusing to overwrite it"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.training-"))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by the service's user
    return staging


def _replace_dir(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old)


def _train(args: argparse.Namespace) -> int:
    from otelai.models.bundle import BundleError, load_bundle

    task = _task(args.dataset, args.path)
    if isinstance(task, str):
        return _fail(task)
    staging = _staging_dir(args.out)
    if isinstance(staging, str):
        return _fail(staging)
    try:
        task.train(args.path, staging, seed=args.seed, progress=not args.no_progress)
        _replace_dir(staging, args.out)
        bundle = load_bundle(args.out)
    except ModuleNotFoundError as exc:
        return _fail(_missing_module(exc, args.dataset))
    except (FileNotFoundError, BundleError) as exc:
        return _fail(str(exc))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    count, size = _size(bundle.path)
    manifest = bundle.manifest
    print(
        f"bundle {manifest.name} {manifest.version} written to {bundle.path} "
        f"({count + 1} files with the manifest, {size / 1e6:.2f} MB)"
    )
    return 0


def _report_dir(bundle: Path, kind: str) -> Path:
    """Default report directory: beside the bundle, or here when that is not writable."""
    parent = bundle.resolve().parent
    return parent / f"report-{kind}" if os.access(parent, os.W_OK) else Path(f"otelai-report-{kind}")


def _evaluate(args: argparse.Namespace) -> int:
    from otelai.models.bundle import BundleError, load_bundle
    from otelai.models.evaluation.report import print_table, write_report

    task = _task(args.dataset, args.path)
    if isinstance(task, str):
        return _fail(task)
    try:
        bundle = load_bundle(args.bundle)
        evaluation = task.evaluate(bundle, args.path, progress=not args.no_progress)
    except ModuleNotFoundError as exc:
        return _fail(_missing_module(exc, args.dataset))
    except (FileNotFoundError, BundleError) as exc:
        return _fail(str(exc))
    print_table(evaluation)
    out = args.out or _report_dir(args.bundle, args.dataset)
    try:
        files = write_report(evaluation, out, bundle=bundle)
    except OSError as exc:
        return _fail(f"cannot write the report to {out}: {exc}")
    print(f"\nreport: {files.html}\nresults: {files.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        return _evaluate(args)
    return _replay(args)


if __name__ == "__main__":
    sys.exit(main())
