"""``meshelect gateway``: run the gateway until Ctrl-C / SIGTERM.

Options can also come from a TOML file (``--config``), in a ``[gateway]`` table whose keys are
the long option names with ``_`` for ``-``; options on the command line win. Mesh keys::

    [gateway]
    db = "/var/lib/meshelect/gateway.db"
    http_port = 8470
    [gateway.mesh_keys]
    greenhouse = "00112233445566778899aabbccddeeff"

On start it prints one line that scripts (``meshelect demo``) can parse::

    meshelect gateway: http://127.0.0.1:8470/ udp 0.0.0.0:47471 db meshelect-gateway.db

``meshelect gateway fence-reset --mesh M [--term N] [--db PATH | --config FILE]`` resets a
mesh's fence in the database (see gateway/fence.py), also while a gateway runs on it: the
running gateway applies, logs and shows it within a tick.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import tomllib
from typing import Any

from agent.core import topics
from gateway.clock import wall_clock
from gateway.fence import MAX_TERM
from gateway.service import PURGE_EVERY_MS, Gateway, GatewayConfig
from gateway.storage import SqliteStorage, StorageError
from gateway.tracker import TrackerConfig

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def duration_ms(text: str) -> int:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"10s"``, ``"500ms"`` (a bare number is seconds)."""
    match = _DURATION.match(str(text).strip())
    if not match:
        raise argparse.ArgumentTypeError("not a duration: %r (use e.g. 7d, 12h, 30s)" % text)
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def mesh_key(text: str) -> tuple[str, bytes]:
    mesh, sep, hex_key = text.partition("=")
    if not sep or not mesh:
        raise argparse.ArgumentTypeError("expected MESH=HEXKEY, got %r" % text)
    try:
        key = bytes.fromhex(hex_key)
    except ValueError:
        raise argparse.ArgumentTypeError("mesh key for %r is not hex" % mesh) from None
    if not key:
        raise argparse.ArgumentTypeError("mesh key for %r is empty" % mesh)
    return mesh, key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshelect gateway",
        description="Receive leaders' batches (UDP, MQTT), store them, serve the dashboard.",
        epilog="Also: meshelect gateway fence-reset --mesh M [--term N] [--db PATH] (see "
        "fence-reset --help).",
    )
    p.add_argument("--config", help="TOML file with a [gateway] table")
    p.add_argument(
        "--db",
        help="SQLite file (default meshelect-gateway.db), or postgresql://user@host/database",
    )
    p.add_argument(
        "--sync",
        choices=["normal", "full"],
        help="SQLite durability: full (default) syncs every acknowledged batch to disk; "
        "normal survives a gateway crash but not a power cut",
    )
    p.add_argument("--retention-raw", type=duration_ms, help="keep raw readings (default 7d)")
    p.add_argument("--retention-agg", type=duration_ms, help="keep aggregates (default 365d)")
    p.add_argument(
        "--purge-every", type=duration_ms, help="apply retention this often (default 10m)"
    )
    p.add_argument(
        "--decode-process",
        action=argparse.BooleanOptionalAction,
        help="decode frames in a process of their own, beside the storage (default off: it "
        "pays only with spare cores and many batches in flight)",
    )
    g = p.add_argument_group("UDP and mDNS")
    g.add_argument("--udp-host", help="bind address (default 0.0.0.0)")
    g.add_argument("--udp-port", type=int, help="UDP port (default 47471; 0: any free port)")
    g.add_argument("--no-udp", action="store_true", default=None, help="no UDP ingest")
    g.add_argument("--mdns", action=argparse.BooleanOptionalAction, help="advertise (default on)")
    g.add_argument("--mdns-interface", action="append", help="advertise on this address only")
    g = p.add_argument_group("MQTT")
    g.add_argument("--mqtt-host", help="broker host; MQTT ingest is off without it")
    g.add_argument("--mqtt-port", type=int, help="broker port (default 1883, 8883 with TLS)")
    g.add_argument("--mqtt-prefix", help="topic prefix (default meshelect)")
    g.add_argument("--mqtt-tls", action="store_true", default=None, help="connect with TLS")
    g.add_argument("--mqtt-ca", help="CA certificate file for TLS")
    g.add_argument("--mqtt-cert", help="client certificate file for TLS")
    g.add_argument("--mqtt-key", help="client key file for TLS")
    g.add_argument("--mqtt-user", help="user name")
    g.add_argument(
        "--mqtt-password", help="password (or set MESHELECT_MQTT_PASSWORD in the environment)"
    )
    g.add_argument(
        "--mqtt-shared-group",
        help="MQTT 5 shared subscription group (several gateways: give each its own --node-id)",
    )
    g = p.add_argument_group("Home Assistant (with --mqtt-host)")
    g.add_argument(
        "--homeassistant",
        action=argparse.BooleanOptionalAction,
        help="publish MQTT discovery configs, states and availability for Home Assistant "
        "(default: on when there is a broker)",
    )
    g.add_argument(
        "--homeassistant-prefix",
        metavar="PREFIX",
        help="Home Assistant's discovery prefix (default: homeassistant)",
    )
    g = p.add_argument_group("HTTP")
    g.add_argument("--http-host", help="bind address (default 127.0.0.1)")
    g.add_argument("--http-port", type=int, help="port (default 8470; 0: any free port)")
    g.add_argument(
        "--api-token", help="token for write APIs (or set MESHELECT_API_TOKEN); none: read-only"
    )
    g = p.add_argument_group("meshes")
    g.add_argument(
        "--mesh-key", type=mesh_key, action="append", metavar="MESH=HEX", help="mesh key (repeat)"
    )
    g.add_argument(
        "--closed",
        action="store_true",
        default=None,
        help="accept only meshes with a key (default: meshes without a key are accepted)",
    )
    g.add_argument("--node-id", help="the gateway's sender id in ack frames (default gateway)")
    g = p.add_argument_group("alerts")
    g.add_argument("--no-leader-after", type=duration_ms, help="default 10s")
    g.add_argument("--silent-after", type=duration_ms, help="default 15s")
    g.add_argument("--low-battery", type=int, help="per mille (default 200)")
    g = p.add_argument_group("demo")
    g.add_argument(
        "--demo-control",
        metavar="SOCKET",
        help="`meshelect demo`'s control socket: the dashboard gets buttons that break the "
        "demo on purpose (default: none, no such buttons or routes)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def load_config(args: argparse.Namespace) -> GatewayConfig:
    """Merge the TOML file (if any) and the command line into a :class:`GatewayConfig`."""
    file: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as fp:
            file = tomllib.load(fp).get("gateway", {})

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        if value is not None:
            return value
        return file.get(name, default)

    keys: dict[str, bytes] = {}
    for mesh, hex_key in sorted(file.get("mesh_keys", {}).items()):
        keys[mesh] = mesh_key("%s=%s" % (mesh, hex_key))[1]
    for mesh, key in args.mesh_key or []:
        keys[mesh] = key
    tls = bool(pick("mqtt_tls", False))

    def duration(name: str, default: int) -> int:
        value = pick(name, None)
        if value is None:
            return default
        return value if isinstance(value, int) else duration_ms(value)

    ha_prefix = str(pick("homeassistant_prefix", "homeassistant")).rstrip("/")
    if not ha_prefix or any(ch in ha_prefix for ch in "+#"):
        raise ValueError("--homeassistant-prefix must be a topic without + or #")
    tracker = TrackerConfig(
        no_leader_ms=duration("no_leader_after", 10_000),
        silent_ms=duration("silent_after", 15_000),
        low_battery=int(pick("low_battery", 200)),
    )
    return GatewayConfig(
        db_path=pick("db", "meshelect-gateway.db"),
        synchronous=str(pick("sync", "full")).upper(),
        raw_retention_ms=duration("retention_raw", 7 * 86_400_000),
        aggregate_retention_ms=duration("retention_agg", 365 * 86_400_000),
        purge_every_ms=duration("purge_every", PURGE_EVERY_MS),
        udp_host=pick("udp_host", "0.0.0.0"),
        udp_port=int(pick("udp_port", 47471)),
        udp=not pick("no_udp", False),
        mdns=bool(pick("mdns", True)),
        mdns_interfaces=pick("mdns_interface", None),
        mqtt_host=pick("mqtt_host", None),
        mqtt_port=int(pick("mqtt_port", 8883 if tls else 1883)),
        mqtt_prefix=pick("mqtt_prefix", topics.DEFAULT_PREFIX),
        mqtt_tls=tls,
        mqtt_ca=pick("mqtt_ca", None),
        mqtt_cert=pick("mqtt_cert", None),
        mqtt_key=pick("mqtt_key", None),
        mqtt_user=pick("mqtt_user", None),
        mqtt_password=pick("mqtt_password", os.environ.get("MESHELECT_MQTT_PASSWORD")),
        mqtt_shared_group=pick("mqtt_shared_group", None),
        http_host=pick("http_host", "127.0.0.1"),
        http_port=int(pick("http_port", 8470)),
        api_token=pick("api_token", os.environ.get("MESHELECT_API_TOKEN")),
        mesh_keys=keys,
        open_meshes=not pick("closed", False),
        node_id=pick("node_id", "gateway"),
        tracker=tracker,
        demo_control=pick("demo_control", None),
        homeassistant=bool(pick("homeassistant", True)),
        homeassistant_prefix=ha_prefix,
        decode_process=bool(pick("decode_process", False)),
    )


async def serve(config: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config)
    await gateway.start()
    try:
        assert gateway.http_address is not None
        host, port = gateway.http_address
        udp = "%s:%d" % gateway.udp_address if gateway.udp_address else "off"
        print(
            "meshelect gateway: http://%s:%d/ udp %s db %s" % (host, port, udp, config.db_path),
            flush=True,
        )
        await stop.wait()
    finally:
        await gateway.stop()


def term(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a term: %r" % text) from None
    if not 0 <= value <= MAX_TERM:
        raise argparse.ArgumentTypeError("a term is between 0 and %d" % MAX_TERM)
    return value


def fence_reset_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshelect gateway fence-reset",
        description="Reset a mesh's fence (the highest batch term the gateway accepts from): "
        "after a bogus batch raised it, the real leader is refused as deposed. Later batches "
        "are fenced against the new term as usual. Works while a gateway runs on the database; "
        "it logs the reset and shows it on its dashboard.",
    )
    p.add_argument("--mesh", required=True, help="the mesh")
    p.add_argument("--term", type=term, default=0, help="the new fence (default 0)")
    p.add_argument("--db", help="SQLite file (default: from --config, else meshelect-gateway.db)")
    p.add_argument("--config", help="TOML file with a [gateway] table (for its db)")
    return p


def fence_reset_cli(argv: list[str]) -> int:
    args = fence_reset_parser().parse_args(argv)
    try:
        db = args.db or load_config(argparse.Namespace(config=args.config, mesh_key=None)).db_path
    except (OSError, tomllib.TOMLDecodeError, argparse.ArgumentTypeError, ValueError) as exc:
        print("meshelect gateway fence-reset: bad configuration: %s" % exc, file=sys.stderr)
        return 2
    if not os.path.exists(db):
        print("meshelect gateway fence-reset: no database %s" % db, file=sys.stderr)
        return 2
    try:
        storage = SqliteStorage(db)
        try:
            record = storage.reset_fence(args.mesh, args.term, "cli", wall_clock()())
        finally:
            storage.close()
    except StorageError as exc:
        print("meshelect gateway fence-reset: storage failing: %s" % exc, file=sys.stderr)
        return 1
    if record is None:
        print("meshelect gateway fence-reset: no mesh %r in %s" % (args.mesh, db), file=sys.stderr)
        return 1
    logging.getLogger("meshelect.gateway").warning(
        "fence of mesh %s reset by operator (cli) from term %d to term %d",
        args.mesh,
        record["from_term"],
        record["to_term"],
    )
    print(
        "meshelect gateway fence-reset: mesh %s fence reset from term %d to term %d (reset #%d)"
        % (args.mesh, record["from_term"], record["to_term"], record["id"])
    )
    return 0


def cli(argv: list[str]) -> int:
    if argv[:1] == ["fence-reset"]:
        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
        return fence_reset_cli(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = load_config(args)
    except (OSError, tomllib.TOMLDecodeError, argparse.ArgumentTypeError, ValueError) as exc:
        print("meshelect gateway: bad configuration: %s" % exc, file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print("meshelect gateway: %s" % exc, file=sys.stderr)
        return 1
    except StorageError as exc:  # the database cannot even be opened or set up
        print("meshelect gateway: storage failing: %s" % exc, file=sys.stderr)
        return 1
    return 0


def main() -> None:
    sys.exit(cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
