"""``edge-agent``: run the agent, check or print its config, infer once, read its status."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edge_agent import __version__
from edge_agent.config import AgentConfig, check_config, load_config, sample_config_text
from edge_agent.errors import EXIT_CONFIG, ConfigError, EdgeError

__all__ = ["main"]

DEFAULT_CONFIG = Path("/etc/edge-agent/agent.toml")

logger = logging.getLogger("edge_agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description=(
            "Edge inference agent: reads plant sensors (MQTT, OPC-UA), builds feature windows, "
            "runs the model and delivers every result through a durable outbox."
        ),
        epilog=(
            "Start with `edge-agent sample-config > agent.toml`, edit it, check it with "
            "`edge-agent check-config --config agent.toml`, "
            "then `edge-agent run --config agent.toml`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config",
            "-c",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"the agent's TOML config (default {DEFAULT_CONFIG})",
        )

    run = commands.add_parser(
        "run",
        help="serve: read sources, infer, publish results until SIGTERM or Ctrl-C",
        description=(
            "Run the agent in the foreground (systemd runs it this way). SIGHUP reloads the "
            "config if it is valid and keeps the running one if not."
        ),
    )
    with_config(run)
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    check = commands.add_parser(
        "check-config",
        help="validate a config file; print each problem with file, line and key (exit 78)",
        description="Validate a config file without starting anything.",
    )
    with_config(check)

    commands.add_parser(
        "sample-config",
        help="print a complete, commented example config",
        description="Print the commented example config (the same file as deploy/agent.toml).",
    )

    once = commands.add_parser(
        "once",
        help="read the real sources until one window is complete, infer, print; publish nothing",
        description=(
            "Check a config against the plant: connect to the configured sources (with client "
            "ids of its own, so a running agent is not disturbed), build one window, run the "
            "model on it and print features and outputs. Nothing is published or stored."
        ),
    )
    with_config(once)
    once.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for a window (default 60)"
    )
    once.add_argument("--json", action="store_true", help="print JSON for scripts")

    status = commands.add_parser(
        "status",
        help="show the running agent's counters: sources, queues, drops, latency, outbox",
        description="Read the status the running agent keeps in its state directory.",
    )
    with_config(status)
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def _run(config_path: Path, config: AgentConfig, log_level: str) -> int:
    from edge_agent.service import AgentService

    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if log_level != "DEBUG":
        # asyncua logs every publish, and every failed request of an outage with a traceback;
        # the OPC-UA source reports an outage itself, once when it starts and once when it ends.
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)

    async def serve() -> None:
        await AgentService(config_path, config).run()

    try:
        asyncio.run(serve())
    except (EdgeError, ExceptionGroup) as raised:
        errors = _leaves(raised)
        unexpected = [err for err in errors if not isinstance(err, EdgeError)]
        if unexpected:
            raise
        for err in errors:
            print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_CONFIG if any(isinstance(err, ConfigError) for err in errors) else 1
    return 0


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, which a task group raises."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _once(config: AgentConfig, timeout: float, as_json: bool) -> int:
    from edge_agent.once import infer_once

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    try:
        result = asyncio.run(infer_once(config, timeout))
    except ConfigError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except EdgeError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return 0
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(result.window_end))
    print(f"model    {result.model}")
    print(f"asset    {result.asset}, window ending {when} UTC")
    for name, value in result.features.items():
        print(f"feature  {name:<30} {value:g}")
    for name, output in result.outputs.items():
        print(f"output   {name:<30} {output}")
    print(f"latency  {result.latency_ms:g} ms")
    for name, count in sorted(result.counters.items()):
        print(f"  {name:<40} {count:g}")
    return 0


def _status(config: AgentConfig, as_json: bool) -> int:
    path = config.device.state_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"edge-agent: no status at {path} ({err}); is the agent running?", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status, indent=2))
        return 0
    age = time.time() - float(status.get("ts", 0))
    print(f"device   {status['device']} (site {status['site']}), pid {status['pid']}")
    print(f"updated  {age:.1f} s ago{'  (STALE: is the agent running?)' if age > 10 else ''}")
    print(f"model    {status.get('model') or '-'}")
    print(f"uplink   {status.get('uplink')}")
    for name, state in status.get("sources", {}).items():
        print(f"source   {name}: {state}")
    for section in ("gauges", "counters"):
        for key, value in sorted(status.get(section, {}).items()):
            print(f"  {key:<40} {value:g}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sample-config":
        sys.stdout.write(sample_config_text())
        return 0
    if args.command == "check-config":
        config, problems = check_config(args.config)
        for problem in problems:
            print(problem, file=sys.stderr)
        if config is None:
            print(f"{len(problems)} problem(s) in {args.config}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"{args.config}: OK")
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "status":
        return _status(config, args.json)
    if args.command == "once":
        return _once(config, args.timeout, args.json)
    return _run(args.config, config, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
