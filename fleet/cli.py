"""``fleet``: see the devices, and (as the fleet grows) roll models out to them."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from edge_agent.contracts.topics import DEFAULT_PREFIX
from edge_agent.mqtt import MqttSettings

__all__ = ["main"]


def _broker(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="Fleet manager for edge agents: which devices run what, and how they are.",
    )
    parser.add_argument(
        "--broker",
        type=_broker,
        default=os.environ.get("FLEET_BROKER", "127.0.0.1:1883"),
        help="the fleet's MQTT broker as HOST:PORT (default $FLEET_BROKER or 127.0.0.1:1883)",
    )
    parser.add_argument(
        "--prefix",
        default=os.environ.get("FLEET_PREFIX", DEFAULT_PREFIX),
        help=f"topic prefix the agents use (default $FLEET_PREFIX or {DEFAULT_PREFIX})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    devices = commands.add_parser("devices", help="list and inspect devices")
    device_commands = devices.add_subparsers(
        dest="devices_command", metavar="ACTION", required=True
    )
    listing = device_commands.add_parser(
        "list", help="every device with its state (online, stopped, offline) and model"
    )
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")

    demo = commands.add_parser(
        "demo",
        help="run the whole story on this machine: broker, model, agent, live predictions",
        description=(
            "Start a local mosquitto, train and bundle a pump-health model, run an edge agent on "
            "a simulated pump whose bearing wears, and print its predictions. Ctrl-C stops."
        ),
    )
    demo.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    demo.add_argument("--workdir", type=Path, help="keep the demo's files here (default: temp)")
    return parser


def _devices_list(args: argparse.Namespace) -> int:
    from fleet.status import collect_status

    host, port = args.broker
    settings = MqttSettings(host=host, port=port, client_id=f"fleet-cli-{uuid.uuid4().hex[:8]}")
    try:
        statuses, problems = asyncio.run(collect_status(settings, args.prefix))
    except ConnectionError as err:
        print(f"fleet: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"fleet: skipped {problem}", file=sys.stderr)
    rows = [statuses[key] for key in sorted(statuses)]
    if args.json:
        print(json.dumps([status.model_dump() for status in rows], indent=2))
        return 0
    if not rows:
        print(f"no devices under prefix {args.prefix!r}")
        return 0
    header = ("SITE", "DEVICE", "STATE", "MODEL", "AGENT", "SINCE")
    table = [
        (
            s.site,
            s.device,
            s.state,
            f"{s.model}@{s.model_version}" if s.model else "-",
            s.agent_version,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.ts)),
        )
        for s in rows
    ]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "devices" and args.devices_command == "list":
        return _devices_list(args)
    if args.command == "demo":
        from fleet.demo import run_demo

        return run_demo(args.workdir, args.duration)
    raise AssertionError("argparse accepts only known commands")


if __name__ == "__main__":
    sys.exit(main())
