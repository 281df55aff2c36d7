"""``MeshBrokerDriver``: the MQTT broker a mesh in MQTT mode talks through, for tests that
restart it. A virtual bench's broker is a real Mosquitto in its own namespace; on a real
bench ``restart_cmd`` says how (e.g. ``ssh gw sudo systemctl restart mosquitto``)."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any, ClassVar

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory

from hil.drivers.common import HilError, bench_of

COMMAND_TIMEOUT_S = 60.0


@target_factory.reg_driver
@attr.s(eq=False)
class MeshBrokerDriver(Driver):
    bindings: ClassVar[dict[str, Any]] = {"broker": "MeshBroker"}

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.restarts = 0

    @property
    def address(self) -> str:
        resource: Any = self.broker
        if resource.bench:
            return bench_of(self.target, resource.bench).broker_address
        return str(resource.address)

    @Driver.check_active
    def restart(self) -> None:
        """Stop the broker and start it again on the same address (sessions are lost)."""
        resource: Any = self.broker
        if resource.bench:
            bench = bench_of(self.target, resource.bench)
            if bench.broker is None:
                raise HilError("bench %s has no broker (transport: udp)" % resource.bench)
            bench.broker.restart()
        elif resource.restart_cmd:
            try:
                done = subprocess.run(
                    shlex.split(resource.restart_cmd),
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise HilError("broker restart (%s): %s" % (resource.restart_cmd, exc)) from None
            if done.returncode != 0:
                raise HilError(
                    "broker restart failed (exit %d): %s"
                    % (done.returncode, (done.stderr or done.stdout).strip()[-400:])
                )
        else:
            raise HilError("%s: MeshBroker has neither bench nor restart_cmd" % self.target.name)
        self.restarts += 1
