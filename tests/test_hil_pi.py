"""The Raspberry Pi target for real over SSH: a real sshd on a free loopback port stands in for
the Pi, labgrid's ``SSHDriver`` connects with a throw-away key, and ``MeshAgentDriver``
copies the agent's config and the systemd unit over and runs the systemctl commands.

This machine has no systemd, so ``systemctl`` on the "Pi" is a small script that records its
arguments and answers ``is-active`` (the commands are what a Pi would run); the file layout
is rooted in a temporary folder instead of /etc."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from labgrid import Target
from labgrid.driver import SSHDriver
from labgrid.resource import NetworkService

from hil.drivers.agent import UNIT_NAME, MeshAgentDriver, default_unit
from hil.drivers.common import HilError
from testkit.broker import free_port
from testkit.netns import stop_process
from testkit.tools import require_root, require_tool
from testkit.waiting import poll_until

SHIM = """#!/bin/sh
echo "$*" >> {log}
case "$1" in
  is-active) if grep -q '^enable --now' {log}; then echo active; else echo inactive; exit 3; fi ;;
esac
"""


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real sshd for root on 127.0.0.1:<free port>, key login only; yields (port, key)."""
    require_root("sshd checks its files as root")
    sshd_bin = require_tool("sshd", "apt-get install openssh-server")
    keygen = require_tool("ssh-keygen", "apt-get install openssh-client")
    folder = tmp_path / "sshd"
    folder.mkdir()
    host_key, client_key = folder / "host_key", folder / "client_key"
    for key in (host_key, client_key):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
        )
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "Port %d" % port,
                "ListenAddress 127.0.0.1",
                "HostKey %s" % host_key,
                "AuthorizedKeysFile %s" % (folder / "authorized_keys"),
                "PidFile %s" % (folder / "sshd.pid"),
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
            ]
        )
        + "\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    log = (folder / "sshd.log").open("wb")
    process = subprocess.Popen(
        [sshd_bin, "-D", "-e", "-f", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert poll_until(lambda: _listening(port) or process.poll() is not None, 10.0)
        assert process.poll() is None, (folder / "sshd.log").read_text()
        yield port, client_key
    finally:
        stop_process(process)
        log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def pi_target(port: int, key: Path, config: Path, root: Path, systemctl: str) -> Any:
    """The "Pi": labgrid's SSHDriver to the sshd, the agent driver with its files under
    ``root``; returns (target, agent driver)."""
    target = Target("pi-1")
    NetworkService(target, None, address="127.0.0.1", username="root", port=port)
    SSHDriver(target, None, keyfile=str(key), connection_timeout=10.0)
    agent = MeshAgentDriver(
        target,
        None,
        config_file=str(config),
        config_path=str(root / "etc" / "meshelect" / "agent.toml"),
        unit_dir=str(root / "etc" / "systemd" / "system"),
        systemctl=systemctl,
    )
    return target, agent


def test_agent_driver_installs_and_starts_the_unit_over_real_ssh(
    sshd: tuple[int, Path], tmp_path: Path
) -> None:
    port, key = sshd
    root = tmp_path / "pi-root"
    shim_log = tmp_path / "systemctl.log"
    shim = tmp_path / "systemctl"
    shim.write_text(SHIM.format(log=shim_log))
    shim.chmod(0o755)
    config = tmp_path / "pi-1.toml"
    config.write_text('node_id = "pi-1"\nmesh = "bench"\n')

    target, agent = pi_target(port, key, config, root, str(shim))
    try:
        target.activate(agent)
        assert not agent.active()
        agent.install()
        installed = root / "etc" / "meshelect" / "agent.toml"
        assert installed.read_text() == config.read_text()
        unit = root / "etc" / "systemd" / "system" / UNIT_NAME
        assert unit.read_text() == Path(default_unit()).read_text()
        assert oct(unit.stat().st_mode & 0o777) == "0o644"
        assert agent.active()
        agent.restart()
        lines = shim_log.read_text().splitlines()
        assert lines == [
            "is-active %s" % UNIT_NAME,
            "daemon-reload",
            "enable --now %s" % UNIT_NAME,
            "is-active %s" % UNIT_NAME,
            "restart %s" % UNIT_NAME,
        ]
    finally:
        target.cleanup()


def test_agent_driver_says_which_command_failed(sshd: tuple[int, Path], tmp_path: Path) -> None:
    port, key = sshd
    config = tmp_path / "pi-1.toml"
    config.write_text('node_id = "pi-1"\n')
    target, agent = pi_target(port, key, config, tmp_path, "/nonexistent/systemctl")
    try:
        target.activate(agent)
        with pytest.raises(HilError, match=r"pi-1: `/nonexistent/systemctl daemon-reload` failed"):
            agent.install()
        assert (tmp_path / "etc" / "meshelect" / "agent.toml").exists()  # the steps before it ran
    finally:
        target.cleanup()
