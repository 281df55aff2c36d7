"""`meshelect firmware ota`: over-the-air updates of the boards' app (firmware/app/ota.py).

    meshelect firmware ota key    --out update.key
    meshelect firmware ota bundle --build build/firmware --out bundles/v2 --version v2 \\
                                  --key-file update.key [--trial-s 120] [--image micropython.bin]
    meshelect firmware ota serve  --root bundles --listen 0.0.0.0:8470 [--log reports.jsonl]
    meshelect firmware ota push   --bundle bundles/v2 --key-file update.key \\
                                  --listen 10.0.0.9:8470 --board fw-1=10.0.0.2 ... \\
                                  [--gateway http://gw:8080 --mesh greenhouse]
                                  [--mqtt-host BROKER --mesh greenhouse --board fw-2 ...]

- key: a new update key (32 random bytes, hex). It is not the mesh key: every node holds
  the mesh key, so a lost board would sign updates for the whole fleet. Boards get it as
  ``update_key`` in config.json (deploy or ``firmware provision --port``).
- bundle: the app folders of a ``firmware build`` (``agent``, ``app``, ``hw``, ``lib``: not
  boot.py, main.py, start.mpy or otaboot.mpy, which make the way back and stay as they are) and a
  ``manifest``: a line with the hex HMAC-SHA256 of the rest under the update key, then JSON
  (version, serial, trial_ms, dirs, files with sha256 and size). ``serial`` (the bundle's
  build time, seconds) must grow: a board takes only a serial above every one it has tried.
  ``--image``: a MicroPython ESP32 app image too (``image`` in the manifest, with its sha256
  and size; the bundle holds it as micropython.bin), written into the board's other OTA app
  slot and rolled back by the bootloader unless the app commits; ``--image`` alone (no
  ``--build``) bundles the image only.
- serve: plain HTTP over a folder of bundles; a board's ``GET <bundle>/report?...`` is
  recorded (``--log``: one JSON line each). The gateway serves bundles too (``--ota-dir``).
- push: serves the bundle (``--listen``; or ``--url`` of one the gateway serves) and updates
  the boards one at a time, each by a signed notice to its UDP port (and with ``--mqtt-host``
  on its MQTT topic as well, tools/ota_mqtt.py: ``--board NODE`` with no address for a board
  on MQTT only), waiting for it to commit (or fail) before the next. With ``--gateway`` the
  mesh's leader goes last, when the others run the new app (it hands over before its reset),
  and the leader is asked again before every board. Exit 0 when every board committed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agent.core import topics
from agent.core.auth import Key
from tools.ota_mqtt import MqttNotices

MANIFEST = "manifest"
IMAGE_FILE = "micropython.bin"  # a bundle's MicroPython image, if it has one
APP_DESC_MAGIC = (0xABCD5432).to_bytes(4, "little")  # esp_app_desc_t, at byte 32 of an image
BUNDLE_DIRS = ("agent", "app", "hw", "lib")
DEFAULT_PORT = 8471  # (the gateway's HTTP port is 8470)
MESH_PORT = 47470
TAG_BYTES = 16  # of a notice's HMAC
NOTICE_EVERY_S = 2.0  # a notice is a datagram: sent again until the board reports
DEFAULT_TRIAL_S = 120
# What a board reports, in order (firmware/app/ota.py); "failed" and "rolled-back" end it.
STATES = ("idle", "downloading", "verifying", "pending", "trial", "rolled-back", "failed")


class OtaError(Exception):
    """A problem the user can fix; printed as one line."""


def read_key(path: str | Path) -> bytes:
    try:
        key = bytes.fromhex(Path(path).read_text().strip())
    except FileNotFoundError:
        raise OtaError("%s does not exist" % path) from None
    except ValueError:
        raise OtaError("%s: expected the key in hex" % path) from None
    if len(key) not in (16, 32):
        raise OtaError("%s: an update key is 16 or 32 bytes" % path)
    return key


def new_key(path: Path) -> None:
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)


def sign(key: bytes, body: bytes) -> str:
    return Key(key).digest(body).hex()


def check_image(data: bytes, path: Path) -> None:
    """An ESP32 app image: ESP-IDF's image magic, then the app description's magic word (the
    combined ``firmware.bin`` of a MicroPython build starts with the bootloader instead)."""
    if data[:1] != b"\xe9" or data[32:36] != APP_DESC_MAGIC:
        raise OtaError(
            "%s is not an ESP32 app image (take the build's micropython.bin, not the "
            "combined firmware.bin)" % path
        )


def _entry(rel: str, data: bytes, out: Path) -> dict[str, Any]:
    """Write ``data`` as ``out/rel``; its manifest entry."""
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def bundle(
    build: Path | None,
    out: Path,
    version: str,
    key: bytes,
    serial: int | None = None,
    trial_s: int = DEFAULT_TRIAL_S,
    image: Path | None = None,
) -> dict[str, Any]:
    """Copy the app folders of ``build`` and the MicroPython ``image`` (either may be None)
    into ``out`` (emptied first) with a signed manifest."""
    if build is None and image is None:
        raise OtaError("a bundle needs a firmware build, an image, or both")
    if build is not None and not (build / "app").is_dir():
        raise OtaError("no firmware build at %s: run `meshelect firmware build`" % build)
    image_data = b""
    if image is not None:
        try:
            image_data = image.read_bytes()
        except OSError as exc:
            raise OtaError("%s: %s" % (image, exc.strerror)) from None
        check_image(image_data, image)
    if out.exists():
        shutil.rmtree(out)
    files = []
    dirs = [name for name in BUNDLE_DIRS if build is not None and (build / name).is_dir()]
    for name in dirs:
        assert build is not None
        for path in sorted((build / name).rglob("*")):
            if path.is_file():
                rel = path.relative_to(build).as_posix()
                files.append(_entry(rel, path.read_bytes(), out))
    manifest: dict[str, Any] = {
        "version": version,
        "serial": int(time.time()) if serial is None else serial,
        "trial_ms": trial_s * 1000,
        "dirs": dirs,
        "files": files,
    }
    if image is not None:
        out.mkdir(parents=True, exist_ok=True)
        manifest["image"] = _entry(IMAGE_FILE, image_data, out)
    body = json.dumps(manifest, separators=(",", ":")).encode()
    (out / MANIFEST).write_bytes(sign(key, body).encode() + b"\n" + body)
    return manifest


def read_manifest(folder: Path, key: bytes) -> dict[str, Any]:
    """The bundle's manifest, checked against its signature as a board does."""
    try:
        data = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise OtaError("no bundle at %s (no manifest)" % folder) from None
    if data[64:65] != b"\n" or not Key(key).verify(data[65:], bytes.fromhex(data[:64].decode())):
        raise OtaError("%s: the manifest is not signed with this update key" % folder)
    manifest: dict[str, Any] = json.loads(data[65:])
    return manifest


def notice(key: bytes, url: str, serial: int, node: str = "*") -> bytes:
    """The datagram that tells a board to fetch the bundle at ``url`` (firmware/app/ota.py)."""
    body = json.dumps({"url": url, "serial": serial, "node": node}, separators=(",", ":"))
    data = body.encode()
    return b"U" + Key(key).tag(data, TAG_BYTES) + data


# ---------------------------------------------------------------------------------- serving


class Reports:
    """What each board reported last (node -> the report's fields), for waiters to read."""

    def __init__(self, log: Path | None = None) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        self.log = log

    def add(self, query: str) -> dict[str, Any] | None:
        """A board's report (the query of its GET); None when it is not one."""
        return self.put({k: v[-1] for k, v in urllib.parse.parse_qs(query).items()})

    def put(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        node = fields.get("node")
        if not node or fields.get("state") not in STATES:
            return None
        report: dict[str, Any] = {
            "node": node,
            "state": fields["state"],
            "pct": int(fields["pct"]) if str(fields.get("pct", "")).isdigit() else 0,
            "version": fields.get("version", ""),
            "new": fields.get("new", ""),
            "reason": fields.get("reason", ""),
            "at": fields.get("at") or time.time(),
        }
        with self.changed:
            if self.latest.get(node, {}).get("at") == report["at"]:
                return report  # (the gateway's listing, polled again: nothing new)
            self.latest[node] = report
            if self.log is not None:
                with self.log.open("a") as f:
                    f.write(json.dumps(report, sort_keys=True) + "\n")
            self.changed.notify_all()
        return report

    def wait(
        self, check: Callable[[dict[str, dict[str, Any]]], bool], timeout: float, step: float = 1.0
    ) -> bool:
        """Wait until ``check(latest)`` holds (checked at least every ``step`` s)."""
        end = time.monotonic() + timeout
        with self.changed:
            while not check(self.latest):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, step))
        return True


class Handler(SimpleHTTPRequestHandler):
    """Files under the root, and ``.../report?...`` into the server's :class:`Reports`."""

    def do_GET(self) -> None:  # (http.server's name)
        path, _, query = self.path.partition("?")
        if path.endswith("/report"):
            report = self.server.reports.add(query)  # type: ignore[attr-defined]
            self.send_response(HTTPStatus.OK if report else HTTPStatus.BAD_REQUEST)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per 1 KB file is noise; reports are the log


class OtaServer(ThreadingHTTPServer):
    """Serves ``root`` (folders of bundles) and takes the boards' reports."""

    daemon_threads = True

    def __init__(
        self,
        root: Path,
        host: str,
        port: int,
        reports: Reports,
        handler: type[SimpleHTTPRequestHandler] | None = None,
    ) -> None:
        super().__init__((host, port), partial(handler or Handler, directory=str(root)))
        self.reports = reports
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def start(self) -> OtaServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()


# ---------------------------------------------------------------------------------- pushing


def leader_from(gateway: str, mesh: str) -> Callable[[], str | None]:
    """Asks the gateway's API who leads ``mesh`` (None when it cannot tell)."""

    def ask() -> str | None:
        url = "%s/api/meshes/%s" % (gateway.rstrip("/"), urllib.parse.quote(mesh))
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                leader = json.load(answer).get("leader")
        except (OSError, ValueError):
            return None
        return leader if isinstance(leader, str) else None

    return ask


def follow_gateway(gateway: str, reports: Reports, stop: threading.Event) -> threading.Thread:
    """Feed ``reports`` from the gateway's ``/api/ota`` (bundles the gateway serves: the boards
    report there) every second until ``stop``."""

    def poll() -> None:
        url = gateway.rstrip("/") + "/api/ota"
        while not stop.wait(1.0):
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    listing = json.load(answer)
            except (OSError, ValueError):
                continue
            for report in listing if isinstance(listing, list) else ():
                if isinstance(report, dict):
                    reports.put(report)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return thread


def next_board(pending: Sequence[str], leader: str | None) -> str:
    """The board to update next: never the leader while another board waits."""
    for node in pending:
        if node != leader:
            return node
    return pending[0]


def push(
    boards: dict[str, tuple[str, int] | None],
    key: bytes,
    url: str,
    manifest: dict[str, Any],
    reports: Reports,
    leader: Callable[[], str | None] = lambda: None,
    timeout: float = 300.0,
    log: Callable[[str], None] = print,
    sock: socket.socket | None = None,
    publish: Callable[[str, bytes], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Update ``boards`` (node -> UDP address, or None) one at a time; returns each board's
    outcome. ``sock``: the UDP socket notices go out of (default: a new one); ``publish(node,
    notice)``: sends each notice on MQTT too (``MqttNotices.send``)."""
    version = manifest["version"]
    pending = sorted(boards)
    outcome: dict[str, dict[str, Any]] = {}
    with sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

        def send(node: str, data: bytes) -> None:
            address = boards[node]
            if address is not None:
                sock.sendto(data, address)
            if publish is not None:
                publish(node, data)

        while pending:
            node = next_board(pending, leader())
            pending.remove(node)
            log("%s: notified (%s)" % (node, version))
            data = notice(key, url, manifest["serial"], node)
            started = time.monotonic()
            report = _update_one(partial(send, node, data), node, version, reports, timeout)
            outcome[node] = dict(report, seconds=round(time.monotonic() - started, 1))
            state = report["state"]
            log(
                "%s: %s%s in %.1f s"
                % (
                    node,
                    "committed %s" % version if state == "idle" else state,
                    ": " + report["reason"] if report.get("reason") else "",
                    outcome[node]["seconds"],
                )
            )
    return outcome


def _update_one(
    send: Callable[[], None],
    node: str,
    version: str,
    reports: Reports,
    timeout: float,
) -> dict[str, Any]:
    """Notify one board until it reports an outcome: committed, failed, rolled back."""
    resend = 0.0

    def done(latest: dict[str, dict[str, Any]]) -> bool:
        nonlocal resend
        if time.monotonic() >= resend:  # a lost datagram, or a board still rebooting
            send()
            resend = time.monotonic() + NOTICE_EVERY_S
        report = latest.get(node)
        return report is not None and (
            report["state"] in ("failed", "rolled-back")
            or (report["state"] == "idle" and report["version"] == version)
        )

    if not reports.wait(done, timeout):
        return {"node": node, "state": "timeout", "reason": "no outcome in %d s" % timeout}
    return reports.latest[node]


def host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise OtaError("bad address %r" % text) from None


def board_list(items: Sequence[str], mqtt: bool = False) -> dict[str, tuple[str, int] | None]:
    """``NODE=HOST[:PORT]`` (UDP; MQTT too with a broker), or ``NODE`` (MQTT only)."""
    boards: dict[str, tuple[str, int] | None] = {}
    for item in items:
        node, sep, address = item.partition("=")
        if not node or (sep and not address) or not (sep or mqtt):
            raise OtaError(
                "--board takes NODE=HOST[:PORT]%s, got %r" % (" or NODE" if mqtt else "", item)
            )
        boards[node] = host_port(address, MESH_PORT) if sep else None
    return boards


# ---------------------------------------------------------------------------------- CLI


def add_parser(sub: Any) -> None:
    """``ota`` and its actions under ``meshelect firmware``."""
    p = sub.add_parser("ota", help="over-the-air updates: key, bundle, serve, push")
    ota = p.add_subparsers(dest="ota_action", required=True, metavar="OTA_ACTION")
    q = ota.add_parser("key", help="make a new update key")
    q.add_argument("--out", required=True)
    q = ota.add_parser("bundle", help="a signed bundle: the app of a build, an image, or both")
    q.add_argument("--build", help="the firmware build (default build/firmware, none with --image)")
    q.add_argument("--image", help="a MicroPython ESP32 app image (micropython.bin) to update too")
    q.add_argument("--out", required=True)
    q.add_argument("--version", required=True, help="the version tag boards report")
    q.add_argument("--key-file", required=True)
    q.add_argument("--trial-s", type=int, default=DEFAULT_TRIAL_S, help="time to join the mesh")
    q.add_argument("--serial", type=int, help="default: now, in seconds")
    q = ota.add_parser("serve", help="serve a folder of bundles and log the boards' reports")
    q.add_argument("--root", required=True)
    q.add_argument("--listen", default="0.0.0.0:%d" % DEFAULT_PORT)
    q.add_argument("--log", help="append the reports to this file (JSON lines)")
    q = ota.add_parser("push", help="update boards one at a time, the leader last")
    q.add_argument("--bundle", required=True)
    q.add_argument("--key-file", required=True)
    q.add_argument(
        "--board",
        action="append",
        required=True,
        help="NODE=HOST[:PORT] (UDP), or NODE with --mqtt-host (MQTT only)",
    )
    q.add_argument("--listen", help="serve the bundle here (HOST:PORT the boards can reach)")
    q.add_argument("--url", help="or the bundle's URL where the gateway serves it")
    q.add_argument("--gateway", help="the gateway's HTTP address: finds the leader")
    q.add_argument("--mesh", help="the boards' mesh (with --gateway or --mqtt-host)")
    g = q.add_argument_group("notices on MQTT too (boards on the MQTT transport)")
    g.add_argument("--mqtt-host", help="the boards' broker: each notice goes on its topic too")
    g.add_argument("--mqtt-port", type=int, help="default 1883, 8883 with TLS")
    g.add_argument("--mqtt-prefix", default=topics.DEFAULT_PREFIX, help="the boards' prefix")
    g.add_argument("--mqtt-tls", action="store_true", help="connect with TLS")
    g.add_argument("--mqtt-ca", help="CA certificate file for TLS")
    g.add_argument("--mqtt-user", help="user name")
    g.add_argument(
        "--mqtt-password", help="password (or set MESHELECT_MQTT_PASSWORD in the environment)"
    )
    q.add_argument("--timeout", type=float, default=300.0, help="seconds per board")
    q.add_argument("--log", help="append the reports to this file (JSON lines)")


def mqtt_notices(args: argparse.Namespace) -> MqttNotices:
    if not args.mesh:
        raise OtaError("--mqtt-host needs --mesh: the boards' topics name it")
    try:
        return MqttNotices(
            args.mqtt_host,
            args.mqtt_port or (8883 if args.mqtt_tls else 1883),
            args.mesh,
            args.mqtt_prefix,
            args.mqtt_user,
            args.mqtt_password or os.environ.get("MESHELECT_MQTT_PASSWORD"),
            args.mqtt_tls,
            args.mqtt_ca,
        )
    except ConnectionError as exc:
        raise OtaError(str(exc)) from None


def cli(args: argparse.Namespace) -> int:
    try:
        return _cli(args)
    except OtaError as exc:
        print("meshelect firmware ota: %s" % exc, file=sys.stderr)
        return 2


def _cli(args: argparse.Namespace) -> int:
    action = args.ota_action
    if action == "key":
        new_key(Path(args.out))
        print("new update key in %s (give it to boards as update_key)" % args.out)
        return 0
    if action == "bundle":
        build = args.build or (None if args.image else "build/firmware")
        manifest = bundle(
            Path(build) if build else None,
            Path(args.out),
            args.version,
            read_key(args.key_file),
            args.serial,
            args.trial_s,
            Path(args.image) if args.image else None,
        )
        image = manifest.get("image")
        print(
            "bundle %s (serial %d): %d files, %d bytes%s in %s"
            % (
                args.version,
                manifest["serial"],
                len(manifest["files"]),
                sum(f["size"] for f in manifest["files"]),
                ", an image of %d bytes" % image["size"] if image else "",
                args.out,
            )
        )
        return 0
    log = Path(args.log) if args.log else None
    reports = Reports(log)
    if action == "serve":
        host, port = host_port(args.listen, DEFAULT_PORT)
        serving = OtaServer(Path(args.root), host, port, reports)
        print("serving %s on http://%s:%d/" % (args.root, host, port), flush=True)
        try:
            serving.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            serving.server_close()
        return 0
    folder = Path(args.bundle)
    key = read_key(args.key_file)
    manifest = read_manifest(folder, key)
    boards = board_list(args.board, mqtt=bool(args.mqtt_host))
    if len(boards) > 1 and not args.gateway:
        raise OtaError("--gateway is needed for several boards: it says which one leads")
    leader = leader_from(args.gateway, args.mesh or "default") if args.gateway else lambda: None
    server: OtaServer | None = None
    stop = threading.Event()
    if args.url:
        if not args.gateway:
            raise OtaError("--url needs --gateway: the boards report to the gateway")
        url = args.url if args.url.endswith("/") else args.url + "/"
        follow_gateway(args.gateway, reports, stop)
    elif args.listen:
        host, port = host_port(args.listen, DEFAULT_PORT)
        server = OtaServer(folder.resolve().parent, host, port, reports).start()
        url = "http://%s:%d/%s/" % (host, server.server_address[1], folder.resolve().name)
    else:
        raise OtaError("give --listen (serve the bundle here) or --url")
    notices = None
    try:
        if args.mqtt_host:
            notices = mqtt_notices(args)
        outcome = push(
            boards,
            key,
            url,
            manifest,
            reports,
            leader,
            args.timeout,
            publish=notices.send if notices else None,
        )
    finally:
        stop.set()
        if server is not None:
            server.close()
        if notices is not None:
            notices.close()
    ok = sum(1 for o in outcome.values() if o["state"] == "idle")
    print("updated %d of %d boards to %s" % (ok, len(boards), manifest["version"]), flush=True)
    return 0 if ok == len(boards) else 1
