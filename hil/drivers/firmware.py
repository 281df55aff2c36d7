"""Putting meshelect on a board: ``EsptoolDriver`` flashes MicroPython (esptool, through
``tools.firmware``), ``MeshDeployDriver`` deploys the firmware build and the node's config.

``MeshDeployDriver`` holds the node's config (the firmware inventory's keys: ``node_id``,
``mesh``, ``mesh_key``, ``transport``, ``[data]``, ``[hw]``...) and deploys through what it is
bound to: a serial port (``meshelect firmware deploy``: mpremote copies the files whose sha256
differ, then resets the board) or a virtual board's ``MicroPythonUnixDriver`` (links the build
into its folder). The build is made once per session (``hil.drivers.common.firmware_build``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory
from labgrid.protocol import BootstrapProtocol
from labgrid.resource import NetworkSerialPort

from hil.drivers.common import HilError, firmware_build
from tools import firmware as firmware_tool

NODE_OPTION = "mesh_node"  # environment option: config keys every board shares
SERIAL_PORTS = {"SerialPort", "NetworkSerialPort"}  # RawSerialPort, USBSerialPort, a farm's


def port_url(port: Any) -> str:
    """The address esptool and mpremote open: a device path, or ``rfc2217://host:port``."""
    if isinstance(port, NetworkSerialPort):
        return "rfc2217://%s:%s" % (port.host, port.port)
    return str(port.port or "")


@target_factory.reg_driver
@attr.s(eq=False)
class EsptoolDriver(Driver, BootstrapProtocol):
    """Erase the chip and write a MicroPython image. ``image``: a key of the environment's
    ``images:`` or a path (relative to the environment file)."""

    bindings: ClassVar[dict[str, Any]] = {"port": SERIAL_PORTS}
    image: str = attr.ib(default="", validator=attr.validators.instance_of(str))
    chip: str = attr.ib(default="esp32", validator=attr.validators.instance_of(str))
    baud: int = attr.ib(
        default=firmware_tool.DEFAULT_BAUD, validator=attr.validators.instance_of(int)
    )

    def image_path(self, filename: str | None = None) -> str:
        wanted = filename or self.image
        if not wanted:
            raise HilError("board %s: EsptoolDriver has no image" % self.target.name)
        env = self.target.env
        if env is not None:
            if wanted in env.config.data.get("images", {}):
                return str(env.config.get_image_path(wanted))
            return str(env.config.resolve_path(wanted))
        return wanted

    @Driver.check_active
    def load(self, filename: str | None = None) -> None:
        image = self.image_path(filename)
        try:
            firmware_tool.flash(port_url(self.port), image, self.chip, self.baud, dry_run=False)
        except firmware_tool.ToolError as exc:
            raise HilError("board %s: flashing failed: %s" % (self.target.name, exc)) from None


@target_factory.reg_driver
@attr.s(eq=False)
class MeshDeployDriver(Driver):
    bindings: ClassVar[dict[str, Any]] = {"port": {*SERIAL_PORTS, "MicroPythonUnixDriver"}}
    config: dict[str, Any] = attr.ib(factory=dict, validator=attr.validators.instance_of(dict))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.deployed: list[str] = []

    @property
    def mesh(self) -> str:
        return str(self.node_config().get("mesh", "default"))

    @property
    def on_serial(self) -> bool:
        """True for a real board: deploying needs it powered and its serial port free."""
        from hil.drivers.unixboard import MicroPythonUnixDriver

        return not isinstance(self.port, MicroPythonUnixDriver)

    def node_config(self) -> dict[str, Any]:
        """The config table as deployed (a virtual board adds its slot's keys)."""
        env = self.target.env
        shared = env.config.data.get("options", {}).get(NODE_OPTION, {}) if env else {}
        config = firmware_tool.merge(dict(shared), self.config)
        config.setdefault("node_id", self.target.name)
        if not self.on_serial:
            config = firmware_tool.merge(config, self.port.device_overrides())
        return config

    def device_config(self) -> dict[str, Any]:
        """``config.json`` as the board will read it, checked by the firmware's own rules."""
        try:
            return firmware_tool.device_config(self.node_config())
        except firmware_tool.ToolError as exc:
            raise HilError("board %s: %s" % (self.target.name, exc)) from None

    @Driver.check_active
    def deploy(self) -> list[str]:
        """Deploy the session's build and config; returns what was copied."""
        build_dir, _, _ = firmware_build(self.target)
        if self.on_serial:
            try:
                self.deployed = firmware_tool.deploy(
                    port_url(self.port), self.node_config(), build_dir, log=self.logger.info
                )
            except firmware_tool.ToolError as exc:
                raise HilError("board %s: deploy failed: %s" % (self.target.name, exc)) from None
        else:
            self.port.install(Path(build_dir), self.device_config())
            self.deployed = sorted(p.name for p in Path(build_dir).iterdir())
        return self.deployed
