"""``meshelect gateway`` options, config file, signals, and mDNS discovery across hosts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser, cli, load_config
from testkit.gateway import GatewayProcess
from tests.paths import REPO_ROOT


def config_from(argv: list[str]) -> Any:
    return load_config(build_parser().parse_args(argv))


def test_defaults() -> None:
    config = config_from([])
    assert (config.udp_port, config.http_port, config.http_host) == (47471, 8470, "127.0.0.1")
    assert config.mdns and config.udp and config.open_meshes and config.mqtt_host is None
    assert config.synchronous == "FULL"
    assert config.raw_retention_ms == 7 * 86_400_000


def test_toml_config_and_command_line_override(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        "[gateway]\n"
        'db = "/tmp/x.db"\nhttp_port = 9000\nmqtt_host = "broker.local"\nmqtt_tls = true\n'
        'retention_raw = "2d"\nretention_agg = "90d"\nmdns = false\nclosed = true\n'
        "[gateway.mesh_keys]\n"
        'greenhouse = "00ff"\n'
    )
    config = config_from(
        [
            "--config",
            str(path),
            "--http-port",
            "9100",
            "--mesh-key",
            "barn=abcd",
            "--sync",
            "normal",
        ]
    )
    assert config.db_path == "/tmp/x.db" and config.http_port == 9100
    assert (config.mqtt_host, config.mqtt_port, config.mqtt_tls) == ("broker.local", 8883, True)
    assert config.raw_retention_ms == 2 * 86_400_000
    assert config.aggregate_retention_ms == 90 * 86_400_000
    assert config.mesh_keys == {"greenhouse": b"\x00\xff", "barn": b"\xab\xcd"}
    assert not config.mdns and not config.open_meshes
    assert config.synchronous == "NORMAL"


@pytest.mark.parametrize(
    "argv",
    [
        ["--mesh-key", "barn"],
        ["--mesh-key", "barn=zz"],
        ["--mesh-key", "barn="],
        ["--retention-raw", "forever"],
        ["--udp-port", "x"],
        ["--config", "/nonexistent/gw.toml"],
    ],
)
def test_bad_options_exit_with_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    assert code == 2
    assert capsys.readouterr().err


def test_bad_toml_exits_with_2(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway\n")
    assert cli(["--config", str(path)]) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    gw = GatewayProcess(str(tmp_path / "gw.db")).start()
    assert gw.process is not None
    gw.process.send_signal(sig)
    assert gw.process.wait(15) == 0


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with GatewayProcess(str(tmp_path / "a.db")) as first:
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "--db", str(tmp_path / "b.db"), "--no-mdns",
             "--udp-host", "127.0.0.1", "--udp-port", str(first.udp[1]), "--http-port", "0"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()


BROWSE = r"""
import json, sys, time
from zeroconf import IPVersion, ServiceBrowser, Zeroconf
from testkit.gateway import BatchSender, make_batch

SERVICE = "_meshelect-gw._udp.local."
zc = Zeroconf(interfaces=[sys.argv[1]], ip_version=IPVersion.V4Only)
found = []

class Listener:
    def add_service(self, zc, type_, name): found.append(name)
    def update_service(self, zc, type_, name): pass
    def remove_service(self, zc, type_, name): pass

browser = ServiceBrowser(zc, SERVICE, Listener())
deadline = time.monotonic() + 15
while not found and time.monotonic() < deadline:
    time.sleep(0.05)
info = zc.get_service_info(SERVICE, found[0], timeout=5000)
address, port = info.parsed_addresses()[0], info.port
sender = BatchSender("m", "pi-1", (address, port), bind="0.0.0.0")
ack = sender.deliver(1, make_batch(1, "m", "pi-1", [["pi-1", 1, 1, 5, {"t": 1}]]))
txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
print(json.dumps({"address": address, "port": port, "txt": txt, "ack": ack}))
browser.cancel()
zc.close()
"""


def test_leaders_find_the_gateway_by_mdns(lab_factory: Any, tmp_path: Path) -> None:
    """Gateway in one namespace, a leader in another: DNS-SD lookup, then a batch and its ack."""
    lab = lab_factory(prefix="mg-", subnet="10.92.0.0/24", hosts=2)
    gw = GatewayProcess(
        str(tmp_path / "gw.db"),
        "--mdns-interface", lab.address(1), "--udp-port", "47471",
        host=lab.address(1), wrap=["ip", "netns", "exec", lab.ns(1)], mdns=True,
    )  # fmt: skip
    gw.start()
    try:
        result = lab.exec(2, [sys.executable, "-c", BROWSE, lab.address(2)], cwd=REPO_ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
        found = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        gw.stop()
    assert (found["address"], found["port"]) == (lab.address(1), 47471)
    assert found["txt"]["proto"] == "1" and found["txt"]["node"] == "gateway"
    assert found["txt"]["http"] == str(gw.http[1])
    assert found["ack"] == [1, 0, 1]
