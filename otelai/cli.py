"""The ``otelai`` command: serve, validate, replay.

Exit codes: 0 success, 2 bad usage or configuration, 3 the service failed to start,
4 replay could not deliver everything.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from otelai import __version__
from otelai.config import ConfigError, load_config

EXIT_CONFIG = 2
EXIT_START = 3
EXIT_REPLAY = 4


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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "validate":
        return _validate(args.config)
    return _replay(args)


if __name__ == "__main__":
    sys.exit(main())
