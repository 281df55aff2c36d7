"""``MeshAgentDriver``: a Raspberry Pi in the lab, reached with labgrid's ``SSHDriver``.

``install()`` copies the node's ``agent.toml`` and the systemd unit
(``examples/meshelect-agent.service``) to the Pi, then runs ``systemctl daemon-reload`` and
``systemctl enable --now``; ``start``/``stop``/``restart``/``active`` drive the service.
meshelect itself is installed on the Pi by ``install_cmd`` (e.g. ``pip install meshelect``)
if given, else it must be there already (``/usr/local/bin/meshelect``, as the unit says).

Every remote command goes through ``commands_for()``, so what the driver runs is visible
(tests check it) and ``sudo`` is added in one place for a non-root login.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, ClassVar

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory

from hil.drivers.common import HilError
from testkit.tools import SOURCE_ROOT

UNIT_NAME = "meshelect-agent.service"
STAGING = "/tmp/meshelect-hil"  # on the Pi: files land here, then move with install(1)


def default_unit() -> str:
    return str(SOURCE_ROOT / "examples" / UNIT_NAME)


@target_factory.reg_driver
@attr.s(eq=False)
class MeshAgentDriver(Driver):
    """``config_file``: the node's agent.toml on this machine (relative to the environment
    file); ``unit``: the unit file to install (default: the one in ``examples/``)."""

    bindings: ClassVar[dict[str, Any]] = {
        "command": "CommandProtocol",
        "files": "FileTransferProtocol",
    }
    config_file: str = attr.ib(validator=attr.validators.instance_of(str))
    unit: str = attr.ib(default="", validator=attr.validators.instance_of(str))
    config_path: str = attr.ib(
        default="/etc/meshelect/agent.toml", validator=attr.validators.instance_of(str)
    )
    unit_dir: str = attr.ib(
        default="/etc/systemd/system", validator=attr.validators.instance_of(str)
    )
    install_cmd: str = attr.ib(default="", validator=attr.validators.instance_of(str))
    systemctl: str = attr.ib(default="systemctl", validator=attr.validators.instance_of(str))
    sudo: bool = attr.ib(default=False, validator=attr.validators.instance_of(bool))

    def local_path(self, path: str) -> Path:
        env = self.target.env
        return Path(env.config.resolve_path(path) if env is not None else path)

    def commands_for(self, action: str) -> list[str]:
        """The remote commands of ``install``, ``start``, ``stop``, ``restart``, ``active``."""
        q = shlex.quote
        systemctl = q(self.systemctl)
        if action == "install":
            unit_path = "%s/%s" % (self.unit_dir, UNIT_NAME)
            commands = [self.install_cmd] if self.install_cmd else []
            commands += [
                "install -D -m 644 %s %s" % (q(STAGING + "/agent.toml"), q(self.config_path)),
                "install -D -m 644 %s %s" % (q(STAGING + "/" + UNIT_NAME), q(unit_path)),
                "%s daemon-reload" % systemctl,
                "%s enable --now %s" % (systemctl, UNIT_NAME),
            ]
        elif action in ("start", "stop", "restart"):
            commands = ["%s %s %s" % (systemctl, action, UNIT_NAME)]
        elif action == "active":
            commands = ["%s is-active %s" % (systemctl, UNIT_NAME)]
        else:
            raise ValueError("unknown action %r" % action)
        return ["sudo " + c for c in commands] if self.sudo else commands

    @Driver.check_active
    def install(self) -> None:
        config = self.local_path(self.config_file)
        unit = self.local_path(self.unit) if self.unit else Path(default_unit())
        if not config.is_file():
            raise HilError("pi %s: config_file %s does not exist" % (self.target.name, config))
        if not unit.is_file():
            # The default is the checkout's examples/ file; an installed wheel has no examples/.
            raise HilError(
                "pi %s: unit file %s does not exist (set unit: to a copy of "
                "examples/%s)" % (self.target.name, unit, UNIT_NAME)
            )
        self._run("mkdir -p %s" % STAGING)
        self.files.put(str(config), STAGING + "/agent.toml")
        self.files.put(str(unit), STAGING + "/" + UNIT_NAME)
        for command in self.commands_for("install"):
            self._run(command)

    @Driver.check_active
    def start(self) -> None:
        self._run_all("start")

    @Driver.check_active
    def stop(self) -> None:
        self._run_all("stop")

    @Driver.check_active
    def restart(self) -> None:
        self._run_all("restart")

    @Driver.check_active
    def active(self) -> bool:
        (command,) = self.commands_for("active")
        out, _, code = self.command.run(command)
        return code == 0 and bool(out) and out[0].strip() == "active"

    def _run_all(self, action: str) -> None:
        for command in self.commands_for(action):
            self._run(command)

    def _run(self, command: str) -> Any:
        out, err, code = self.command.run(command)
        if code != 0:
            raise HilError(
                "pi %s: `%s` failed (exit %d): %s"
                % (self.target.name, command, code, "\n".join(err or out)[-400:])
            )
        return out
