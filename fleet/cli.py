"""``fleet``: the operator's tool. Which devices run what, roll a model out carefully, see drift.

Every command reads or writes the registry (``--registry``); ``fleet serve`` is the long-running
worker that listens to the devices and carries rollouts out. Human tables by default, ``--json``
for scripts. Exit codes: 0 ok, 1 failure, 2 usage, 78 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.contracts.topics import DEFAULT_PREFIX, FLEET_SHARE_GROUP
from edge_agent.errors import EXIT_CONFIG
from edge_agent.mqtt import MqttSettings

if TYPE_CHECKING:
    from fleet.registry import Registry

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a program SIGPIPE stopped

EPILOG = """\
a day with the fleet:
  fleet serve &                                   # listen to the devices, drive rollouts
  fleet devices list --line line-2                # which devices run what
  fleet models publish press-7.bundle --public-key fleet.pub
  fleet rollout start press@7 --to line=line-2 --canary 1 --waves 10,50,100
  fleet rollout status ROLLOUT --watch            # canary, then waves; halts on a failed gate
  fleet rollout rollback ROLLOUT                  # put every moved device back
  fleet drift report --model press --since 24h    # where live data left the baseline

Every command takes --json. Settings also come from $FLEET_BROKER, $FLEET_PREFIX,
$FLEET_REGISTRY and $FLEET_STORE. See docs/fleet.md.
"""


def _broker(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _since(value: str) -> float:
    """``30m``, ``24h``, ``7d`` ago, or seconds since the epoch."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30m, 24h, 7d or epoch seconds, got {value!r}"
        ) from None


def _waves(value: str) -> list[float]:
    try:
        return [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected percentages like 10,50,100, got {value!r}"
        ) from None


def _model_ref(value: str) -> tuple[str, str]:
    name, sep, version = value.partition("@")
    if not sep or not name or not version:
        raise argparse.ArgumentTypeError(f"expected MODEL@VERSION (press@7), got {value!r}")
    return name, version


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet",
        description=(
            "Fleet manager for edge agents: a registry of devices and model versions, staged "
            "rollouts with health and drift gates and automatic rollback, and drift collection."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    env = os.environ.get
    parser.add_argument(
        "--broker",
        type=_broker,
        default=env("FLEET_BROKER", "127.0.0.1:1883"),
        help="the fleet's MQTT broker as HOST:PORT (default $FLEET_BROKER or 127.0.0.1:1883)",
    )
    parser.add_argument(
        "--prefix",
        default=env("FLEET_PREFIX", DEFAULT_PREFIX),
        help=f"topic prefix the agents use (default $FLEET_PREFIX or {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--registry",
        default=env("FLEET_REGISTRY", "fleet.db"),
        help="a SQLite file, or postgresql://USER@HOST/DB (default $FLEET_REGISTRY or fleet.db)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=Path(env("FLEET_STORE", "fleet-bundles")),
        help="folder where published bundles are kept (default $FLEET_STORE or fleet-bundles)",
    )
    auth = parser.add_argument_group("the manager's own broker connection")
    auth.add_argument("--username", default=env("FLEET_USERNAME"), help="MQTT user name")
    auth.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the MQTT password from this environment variable (never from the command line)",
    )
    auth.add_argument(
        "--password-credential",
        metavar="NAME",
        default=env("FLEET_PASSWORD_CREDENTIAL"),
        help="read the MQTT password from the systemd credential NAME, the file "
        "$CREDENTIALS_DIRECTORY/NAME (LoadCredential= in the unit; default "
        "$FLEET_PASSWORD_CREDENTIAL)",
    )
    auth.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, checking the broker against the system's CAs "
        "(implied by --ca-file and --cert-file)",
    )
    auth.add_argument("--ca-file", help="CA certificate: connect with TLS and check the broker")
    auth.add_argument(
        "--cert-file", help="client certificate for TLS client authentication (implies --tls)"
    )
    auth.add_argument("--key-file", help="the client certificate's key")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _serve_parser(commands)
    _models_parser(commands)
    _devices_parser(commands)
    _rollout_parser(commands)
    _drift_parser(commands)
    _acl_parser(commands)
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


if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _serve_parser(commands: Subparsers) -> None:
    serve = commands.add_parser(
        "serve",
        help="listen to every device, keep the registry current and carry rollouts out",
        description=(
            "Subscribe to the devices' status, heartbeat, ack and drift topics, drop duplicates, "
            "update the registry and drive running rollouts (desired states, transfers, gates, "
            "rollbacks). Run several with the same --share-group to split the load (MQTT 5 "
            "shared subscriptions). Stops cleanly on SIGTERM or Ctrl-C."
        ),
    )
    serve.add_argument(
        "--share-group",
        nargs="?",
        const=FLEET_SHARE_GROUP,
        help=f"share the ingest with other workers in this group (default {FLEET_SHARE_GROUP})",
    )
    serve.add_argument(
        "--client-id",
        help="a stable MQTT client id: the broker keeps acks for this worker while it restarts",
    )
    serve.add_argument("--tick", type=float, default=0.5, help="seconds between rollout steps")
    serve.add_argument("--chunk-size", type=int, default=64 * 1024, help="bundle chunk bytes")
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")


def _models_parser(commands: Subparsers) -> None:
    models = commands.add_parser("models", help="publish and list model versions")
    actions = models.add_subparsers(dest="action", metavar="ACTION", required=True)
    publish = actions.add_parser(
        "publish",
        help="check a bundle's signature and hashes, keep it in the store, register it",
        description=(
            "Verify BUNDLE (every file hash, and the Ed25519 signature with --public-key), copy "
            "it into the store and register MODEL@VERSION so that a rollout can use it."
        ),
    )
    publish.add_argument("bundle", type=Path, help="a .bundle file from edge-convert")
    publish.add_argument("--public-key", type=Path, help="the fleet's public key (PEM)")
    publish.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="register without checking a signature (the agents may still refuse it)",
    )
    _json_flag(publish)
    listing = actions.add_parser("list", help="every published model version")
    listing.add_argument("--name", help="only this model")
    _json_flag(listing)


def _devices_parser(commands: Subparsers) -> None:
    devices = commands.add_parser("devices", help="list and inspect devices")
    actions = devices.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="devices with their state, model and desired model",
        description=(
            "Devices as `fleet serve` recorded them. With --live, ask the broker for the "
            "devices' retained status instead (no registry needed)."
        ),
    )
    listing.add_argument("--site", help="only this site")
    listing.add_argument("--line", help="only this line (the agent's `line` label)")
    listing.add_argument("--tag", help="only devices with this tag (the agent's `tags` label)")
    listing.add_argument("--live", action="store_true", help="read retained status from the broker")
    _json_flag(listing)
    show = actions.add_parser("show", help="one device: labels, health, rollouts it took part in")
    show.add_argument("device", help="device id")
    _json_flag(show)


def _rollout_parser(commands: Subparsers) -> None:
    rollout = commands.add_parser("rollout", help="roll a model version out in stages")
    actions = rollout.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser(
        "start",
        help="start a staged rollout (canary, then waves) that `fleet serve` carries out",
        description=(
            "Stage the devices SELECTOR names: --canary devices first, then each wave up to its "
            "cumulative percentage. A stage ends when each of its devices acked `kept`, failed, "
            "timed out or is offline (offline devices keep a retained desired state and converge "
            "when they return). Then the gates: every device took it, none rolled itself back, "
            "they are still online, and drift on the new version is not worse than on the old "
            "one by more than --drift-margin. A failed gate halts the rollout and rolls back "
            "every device it moved."
        ),
    )
    start.add_argument("model", type=_model_ref, help="MODEL@VERSION, published before")
    start.add_argument(
        "--to",
        required=True,
        metavar="SELECTOR",
        help="'all', or key=value terms joined by commas: site=, line=, tag=, device= "
        "(e.g. site=plant-a,line=line-2)",
    )
    start.add_argument("--canary", type=int, default=1, help="devices in the canary (default 1)")
    start.add_argument(
        "--waves",
        type=_waves,
        default=[100.0],
        help="cumulative percentages after the canary (default 100)",
    )
    start.add_argument(
        "--drift-margin",
        type=float,
        default=0.1,
        help="largest allowed rise of mean PSI over the previous version; negative disables",
    )
    start.add_argument(
        "--soak", type=float, default=0.0, help="seconds to watch a finished stage before its gate"
    )
    start.add_argument(
        "--grace",
        type=float,
        help="seconds each device watches the new model before keeping it (default: the agent's)",
    )
    start.add_argument(
        "--no-online-gate",
        action="store_true",
        help="do not require moved devices to stay online",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds each online device has to take the version (default 600)",
    )
    _json_flag(start)
    status = actions.add_parser("status", help="a rollout's stages and every device's progress")
    status.add_argument("rollout", help="rollout id")
    status.add_argument(
        "--watch", action="store_true", help="refresh every second until the rollout finishes"
    )
    _json_flag(status)
    listing = actions.add_parser("list", help="every rollout, newest last")
    _json_flag(listing)
    for name, text in (
        ("pause", "send no new stage and no new device until resumed"),
        ("resume", "carry a paused rollout on"),
        ("abort", "stop: devices not done keep what they run; moved ones stay (rollback reverts)"),
        ("rollback", "stop and put every device the rollout moved back on its previous version"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("rollout", help="rollout id")
        _json_flag(action)


def _drift_parser(commands: Subparsers) -> None:
    drift = commands.add_parser("drift", help="drift summaries merged across devices")
    actions = drift.add_subparsers(dest="action", metavar="ACTION", required=True)
    report = actions.add_parser(
        "report",
        help="features and outputs of each model version, worst drift (PSI) first",
        description=(
            "Merge the drift summaries the agents sent (exactly: bins and moments add up) and "
            "score them against each model's baseline: PSI (warn 0.1, alert 0.25), "
            "Jensen-Shannon, KS, and the mean shift in baseline standard deviations."
        ),
    )
    report.add_argument("--model", help="only this model")
    report.add_argument("--site", help="only this site")
    report.add_argument("--since", type=_since, help="only windows ending after: 30m, 24h, 7d")
    _json_flag(report)


def _acl_parser(commands: Subparsers) -> None:
    acl = commands.add_parser(
        "broker-acl",
        help="per-device credentials and a Mosquitto ACL: each device uses only its own topics",
        description=(
            "Write a Mosquitto ACL file (and, with mosquitto_passwd, a password file) for every "
            "device in the registry or named with --device SITE/ID: a device may publish and "
            "subscribe only under <prefix>/<site>/<device>/; the manager's user may use all. "
            "New passwords go to a credentials file readable by its owner only."
        ),
    )
    acl.add_argument("--out", type=Path, required=True, help="folder for the files")
    acl.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="SITE/ID",
        help="a device to include (repeat); default: every device in the registry",
    )
    acl.add_argument("--manager-user", default="fleet", help="the manager's user name")
    _json_flag(acl)


# ------------------------------------------------------------------------------- output


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _fail(text: str, code: int = EXIT_FAILURE) -> int:
    print(f"fleet: {text}", file=sys.stderr)
    return code


def _password(args: argparse.Namespace) -> str | None:
    """The manager's broker password, from the environment or a systemd credential; it is
    never put in a log line or an error message."""
    from edge_agent.config import read_secret
    from edge_agent.errors import ConfigError

    if args.password_env and args.password_credential:
        raise ValueError(
            "give --password-env or --password-credential ($FLEET_PASSWORD_CREDENTIAL), not both"
        )
    flag = "--password-env" if args.password_env else "--password-credential"
    try:
        password = read_secret(
            env=args.password_env or None,
            credential=args.password_credential or None,
            what="password",
        )
    except ConfigError as err:
        raise ValueError(f"{flag}: {err.reason}") from err
    if args.password_credential and not password:
        raise ValueError(f"--password-credential: credential {args.password_credential!r} is empty")
    return password


def _settings(
    args: argparse.Namespace, client_id: str, *, persistent: bool = False
) -> MqttSettings:
    host, port = args.broker
    return MqttSettings(
        host=host,
        port=port,
        client_id=client_id,
        username=args.username,
        password=_password(args),
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        # A client certificate only means something inside TLS: never send it in the clear.
        tls=args.tls or args.ca_file is not None or args.cert_file is not None,
        persistent_session=persistent,
    )


# ----------------------------------------------------------------------------- commands


def _serve(args: argparse.Namespace, registry: Registry) -> int:
    from edge_agent.systemd import SystemdNotifier
    from fleet.drift import drift_gate
    from fleet.serve import FleetServer

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    client_id = args.client_id or f"fleet-serve-{uuid.uuid4().hex[:8]}"
    server = FleetServer(
        registry,
        _settings(args, client_id, persistent=args.client_id is not None),
        args.prefix,
        share_group=args.share_group,
        tick_s=args.tick,
        chunk_size=args.chunk_size,
        drift_judge=drift_gate,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        ready = asyncio.Event()
        notifier = SystemdNotifier()

        def serving(_task: object) -> None:
            text = f"serving prefix {args.prefix!r} on {server.client.settings.describe()}"
            if args.share_group:
                text += f" (share group {args.share_group})"
            logging.getLogger("fleet").info("Fleet worker %s", text)
            notifier.ready(text)  # the systemd unit is Type=notify

        waiter = asyncio.create_task(ready.wait(), name="fleet-ready")
        waiter.add_done_callback(serving)
        try:
            await server.run(stop, ready)
        finally:
            waiter.cancel()
            notifier.stopping("stopping")
            notifier.close()

    asyncio.run(run())
    return 0


def _models_publish(args: argparse.Namespace, registry: Registry) -> int:
    import shutil

    from edge_agent.contracts.bundle import BundleError, load_public_key, read_bundle, sha256_hex
    from fleet.registry import ModelRecord

    if args.public_key is None and not args.allow_unsigned:
        return _fail("give --public-key to check the bundle's signature (or --allow-unsigned)", 2)
    try:
        key = load_public_key(args.public_key) if args.public_key is not None else None
        data = args.bundle.read_bytes()
        bundle = read_bundle(data, key, require_signature=key is not None)
    except OSError as err:
        return _fail(f"cannot read {args.bundle}: {err}")
    except BundleError as err:
        return _fail(f"{args.bundle}: {err}")
    manifest = bundle.manifest
    baseline = (
        json.loads(bundle.files["baseline.json"]) if "baseline.json" in bundle.files else None
    )
    args.store.mkdir(parents=True, exist_ok=True)
    target = (args.store / f"{manifest.name}-{manifest.version}.bundle").resolve()
    if not target.exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(args.bundle, tmp)
        tmp.replace(target)
    record = ModelRecord(
        name=manifest.name,
        version=manifest.version,
        sha256=sha256_hex(data),
        size=len(data),
        path=str(target),
        manifest=json.loads(bundle.manifest_bytes),
        baseline=baseline,
        signed=bundle.signed,
        published=time.time(),
    )
    registry.add_model(record)
    if args.json:
        _print_json({k: v for k, v in asdict(record).items() if k not in {"manifest", "baseline"}})
    else:
        signed = "signature checked" if bundle.signed else "NOT signed"
        print(f"published {manifest.label} ({len(data)} bytes, {signed}) -> {target}")
    return 0


def _models_list(args: argparse.Namespace, registry: Registry) -> int:
    models = registry.models(args.name)
    if args.json:
        _print_json([{k: v for k, v in asdict(m).items() if k != "baseline"} for m in models])
        return 0
    if not models:
        print("no models published (fleet models publish BUNDLE)")
        return 0
    _print_table(
        ("MODEL", "VERSION", "SIZE", "SIGNED", "SHA256", "PUBLISHED"),
        [
            (
                m.name,
                m.version,
                m.size,
                "yes" if m.signed else "no",
                m.sha256[:12],
                _when(m.published),
            )
            for m in models
        ],
    )
    return 0


def _devices_live(args: argparse.Namespace) -> int:
    from fleet.status import collect_status

    try:
        settings = _settings(args, f"fleet-cli-{uuid.uuid4().hex[:8]}")
        statuses, problems = asyncio.run(collect_status(settings, args.prefix))
    except ConnectionError as err:
        return _fail(str(err))
    for problem in problems:
        print(f"fleet: skipped {problem}", file=sys.stderr)
    rows = [
        s
        for key, s in sorted(statuses.items())
        if (args.site is None or s.site == args.site)
        and (args.line is None or s.labels.get("line") == args.line)
        and (args.tag is None or args.tag in s.labels.get("tags", "").split(","))
    ]
    if args.json:
        _print_json([status.model_dump() for status in rows])
        return 0
    if not rows:
        print(f"no devices under prefix {args.prefix!r}")
        return 0
    _print_table(
        ("SITE", "DEVICE", "STATE", "MODEL", "AGENT", "SINCE"),
        [
            (
                s.site,
                s.device,
                s.state,
                f"{s.model}@{s.model_version}" if s.model else "-",
                s.agent_version,
                _when(s.ts),
            )
            for s in rows
        ],
    )
    return 0


def _devices_list(args: argparse.Namespace, registry: Registry) -> int:
    devices = registry.devices(site=args.site, line=args.line, tag=args.tag)
    if args.json:
        _print_json([asdict(device) for device in devices])
        return 0
    if not devices:
        print("no devices match (devices appear once `fleet serve` has heard from them)")
        return 0
    _print_table(
        ("SITE", "DEVICE", "LINE", "STATE", "MODEL", "DESIRED", "AGENT", "LAST SEEN"),
        [
            (
                d.site,
                d.id,
                d.line or "-",
                d.state,
                f"{d.model}@{d.model_version}" if d.model else "-",
                f"{d.desired_model}@{d.desired_version}" if d.desired_model else "-",
                d.agent_version or "-",
                _when(d.last_seen),
            )
            for d in devices
        ],
    )
    return 0


def _devices_show(args: argparse.Namespace, registry: Registry) -> int:
    device = registry.device(args.device)
    if device is None:
        return _fail(f"no device {args.device!r} in the registry (see `fleet devices list`)")
    entries = registry.rollout_devices(device=args.device)
    if args.json:
        _print_json({"device": asdict(device), "rollouts": [asdict(e) for e in entries]})
        return 0
    for key, value in asdict(device).items():
        print(f"{key:>16}: {_when(value) if key == 'last_seen' else value}")
    if entries:
        print()
        _print_table(
            ("ROLLOUT", "STAGE", "STATE", "STEP", "REASON"),
            [(e.rollout_id, e.stage, e.state, e.step or "-", e.reason or "") for e in entries],
        )
    return 0


def _rollout_start(args: argparse.Namespace, registry: Registry) -> int:
    from fleet.rollouts import Gates, plan_rollout

    name, version = args.model
    gates = Gates(
        drift_margin=args.drift_margin,
        soak_s=args.soak,
        require_online=not args.no_online_gate,
        grace_s=args.grace,
    )
    rollout = plan_rollout(
        registry,
        name,
        version,
        args.to,
        canary=args.canary,
        waves=args.waves,
        gates=gates,
        timeout_s=args.timeout,
    )
    if args.json:
        _print_json(asdict(rollout))
        return 0
    entries = registry.rollout_devices(rollout.id)
    sizes = [sum(1 for e in entries if e.stage == i) for i in range(len(rollout.stages))]
    plan = ", ".join(f"{stage} ({n})" for stage, n in zip(rollout.stages, sizes, strict=True))
    print(f"rollout {rollout.id}: {name}@{version} to {len(entries)} device(s): {plan}")
    print(f"follow it with: fleet rollout status {rollout.id} --watch")
    return 0


def _rollout_view(registry: Registry, rollout_id: str) -> dict[str, Any] | None:
    rollout = registry.rollout(rollout_id)
    if rollout is None:
        return None
    return {
        "rollout": asdict(rollout),
        "devices": [asdict(e) for e in registry.rollout_devices(rollout_id)],
    }


def _print_rollout(view: dict[str, Any]) -> None:
    from collections import Counter

    rollout, devices = view["rollout"], view["devices"]
    print(
        f"rollout {rollout['id']}  {rollout['model']}@{rollout['version']}"
        f"  to {rollout['selector']}  state {rollout['state'].upper()}"
        + (f"  ({rollout['reason']})" if rollout["reason"] else "")
    )
    for index, stage in enumerate(rollout["stages"]):
        members = [d for d in devices if d["stage"] == index]
        counts = Counter(d["state"] for d in members)
        done = counts.get("done", 0)
        width = 20
        bar = "#" * round(width * done / len(members)) if members else ""
        marker = ">" if index == rollout["stage"] and rollout["state"] == "running" else " "
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        print(f" {marker} {stage:<12} [{bar:<{width}}] {done}/{len(members)}  {summary}")
    print()
    _print_table(
        ("DEVICE", "STAGE", "STATE", "STEP", "REASON"),
        [
            (
                d["device"],
                rollout["stages"][d["stage"]],
                d["state"],
                d["step"] or "-",
                d["reason"] or "",
            )
            for d in devices
        ],
    )


def _rollout_status(args: argparse.Namespace, registry: Registry) -> int:
    from fleet.rollouts import ACTIVE_STATES

    while True:
        view = _rollout_view(registry, args.rollout)
        if view is None:
            return _fail(f"no rollout {args.rollout!r} (see `fleet rollout list`)")
        if args.json:
            _print_json(view)
        else:
            if args.watch and sys.stdout.isatty():
                print("\x1b[2J\x1b[H", end="")
            _print_rollout(view)
        if not args.watch or view["rollout"]["state"] not in ACTIVE_STATES:
            return 0
        sys.stdout.flush()
        time.sleep(1.0)


def _rollout_list(args: argparse.Namespace, registry: Registry) -> int:
    rollouts = registry.rollouts()
    if args.json:
        _print_json([asdict(r) for r in rollouts])
        return 0
    if not rollouts:
        print("no rollouts yet (fleet rollout start MODEL@VERSION --to SELECTOR)")
        return 0
    _print_table(
        ("ROLLOUT", "MODEL", "TO", "STATE", "STAGE", "CREATED"),
        [
            (
                r.id,
                f"{r.model}@{r.version}",
                r.selector,
                r.state,
                r.stages[r.stage],
                _when(r.created),
            )
            for r in rollouts
        ],
    )
    return 0


# What each operator action may change: from these states, to this one.
_TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "abort": (("running", "paused"), "aborting"),
    "rollback": (("running", "paused", "halted", "completed", "aborted"), "rolling_back"),
}


def _rollout_change(args: argparse.Namespace, registry: Registry) -> int:
    allowed, target = _TRANSITIONS[args.action]
    rollout = registry.rollout(args.rollout)
    if rollout is None:
        return _fail(f"no rollout {args.rollout!r} (see `fleet rollout list`)")
    if rollout.state not in allowed or not registry.update_rollout(
        rollout.id, expect={"state": rollout.state}, state=target,
        reason=f"{args.action} asked by the operator",
    ):  # fmt: skip
        return _fail(
            f"rollout {rollout.id} is {rollout.state}: {args.action} needs it "
            f"{' or '.join(allowed)}"
        )
    if args.json:
        _print_json({"rollout": rollout.id, "state": target})
    else:
        note = " (fleet serve carries it out)" if target in {"aborting", "rolling_back"} else ""
        print(f"rollout {rollout.id}: {rollout.state} -> {target}{note}")
        if target == "aborting":
            print(
                f"devices it moved stay moved: `fleet rollout rollback {rollout.id}` reverts them"
            )
    return 0


def _drift_report(args: argparse.Namespace, registry: Registry) -> int:
    from fleet.drift import drift_report

    rows = drift_report(registry, model=args.model, site=args.site, since=args.since)
    if args.json:
        _print_json([asdict(row) for row in rows])
        return 0
    if not rows:
        print("no drift summaries match")
        return 0

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    _print_table(
        (
            "MODEL",
            "NAME",
            "KIND",
            "LEVEL",
            "PSI",
            "JS",
            "KS",
            "SHIFT",
            "DEVICES",
            "WINDOWS",
            "COUNT",
        ),
        [
            (
                f"{r.model}@{r.version}",
                r.name,
                r.kind,
                r.level,
                number(r.psi),
                number(r.js),
                number(r.ks),
                number(r.mean_shift),
                r.devices,
                r.windows,
                r.count,
            )
            for r in rows
        ],
    )
    return 0


def _broker_acl(args: argparse.Namespace, registry: Registry) -> int:
    from fleet.acl import AclError, DeviceId, write_broker_acl

    try:
        if args.device:
            devices = [DeviceId.parse(text) for text in args.device]
        else:
            devices = [DeviceId(d.site, d.id) for d in registry.devices()]
        written = write_broker_acl(
            args.out, devices, prefix=args.prefix, manager_user=args.manager_user
        )
    except AclError as err:
        return _fail(str(err))
    if args.json:
        _print_json(asdict(written))
        return 0
    print(f"ACL for {len(devices)} device(s): {written.acl}")
    if written.password_file is not None:
        print(f"password file (mosquitto_passwd): {written.password_file}")
    else:
        print("mosquitto_passwd not found: no password file written (install mosquitto)")
    print(f"credentials (keep secret; give each device its own): {written.credentials}")
    print(f"broker config lines:\n  acl_file {written.acl}")
    if written.password_file is not None:
        print(f"  password_file {written.password_file}\n  allow_anonymous false")
        print("the broker's user must be able to read both (e.g. chown mosquitto FILE)")
    return 0


Handler = Callable[[argparse.Namespace, "Registry"], int]

_HANDLERS: dict[tuple[str, str | None], Handler] = {
    ("serve", None): _serve,
    ("models", "publish"): _models_publish,
    ("models", "list"): _models_list,
    ("devices", "list"): _devices_list,
    ("devices", "show"): _devices_show,
    ("rollout", "start"): _rollout_start,
    ("rollout", "status"): _rollout_status,
    ("rollout", "list"): _rollout_list,
    ("rollout", "pause"): _rollout_change,
    ("rollout", "resume"): _rollout_change,
    ("rollout", "abort"): _rollout_change,
    ("rollout", "rollback"): _rollout_change,
    ("drift", "report"): _drift_report,
    ("broker-acl", None): _broker_acl,
}


def _demo(args: argparse.Namespace) -> int:
    try:
        from fleet.demo import run_demo

        return run_demo(args.workdir, args.duration)
    except KeyboardInterrupt:
        # Ctrl-C while the demo's modules load or the broker is chosen, before it started
        # anything (from then on it handles the signal itself).
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        # Flush here, where a reader that went away can still be answered; at interpreter exit
        # the same error would print "Exception ignored" and exit 120.
        sys.stdout.flush()
    except BrokenPipeError:
        # `fleet ... --json | head -1`: the reader has all it wanted. Exit as a program stopped
        # by SIGPIPE is reported, without a traceback, and point stdout at /dev/null so that
        # Python's own flush at exit finds nothing to complain about.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "devices" and args.action == "list" and args.live:
        try:
            return _devices_live(args)
        except ValueError as err:
            return _fail(str(err), EXIT_CONFIG)
    from fleet.registry import RegistryError, open_registry
    from fleet.rollouts import RolloutError

    handler = _HANDLERS[(args.command, getattr(args, "action", None))]
    try:
        with open_registry(args.registry) as registry:
            return handler(args, registry)
    except RolloutError as err:
        return _fail(str(err))
    except RegistryError as err:
        return _fail(str(err))
    except ValueError as err:
        return _fail(str(err), EXIT_CONFIG)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
