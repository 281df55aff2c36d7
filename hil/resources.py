"""Resources: passive descriptions of what a lab has. They do nothing; drivers act on them.

A resource says *where* a thing is (a serial device, the commands that switch a USB hub port,
a namespace host, a URL), never *how* to use it: that is the drivers' job (``hil.drivers``).
All of them are frozen, so a session can share them freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATES = ("off", "flashed", "booted", "joined")
LAB_TYPES = ("virtual", "real")


@dataclass(frozen=True)
class SerialPort:
    """A board's USB serial console (``/dev/ttyUSB0``, ``rfc2217://host:port``...)."""

    path: str
    baud: int = 115200


@dataclass(frozen=True)
class PowerPort:
    """A switchable power supply, driven by two commands (argv lists).

    For example a USB hub port via uhubctl (``uhubctl -l 1-1 -p 2 -a off``) or a relay board's
    CLI. ``off_s`` is how long a power cycle keeps the board off (capacitors drain).
    """

    command_on: tuple[str, ...]
    command_off: tuple[str, ...]
    off_s: float = 1.0


@dataclass(frozen=True)
class VirtualBoard:
    """A firmware process on the MicroPython unix port, in host ``host`` of a virtual lab.

    ``heapsize`` (e.g. ``"256k"``) limits the interpreter's heap like a small board's RAM.
    """

    host: int
    heapsize: str | None = None


@dataclass(frozen=True)
class Gateway:
    """The gateway's HTTP API. ``netns``: the URL is reached from inside that network
    namespace (a virtual lab's gateway listens on its own namespace's loopback)."""

    url: str
    netns: str | None = None


@dataclass(frozen=True)
class BoardSpec:
    """One board of a lab: its node config and the resources that reach it.

    A real board has ``serial`` (and usually ``power``); a virtual board has ``virtual``.
    ``config`` is the node's config table (the firmware inventory's ``[defaults]`` merged with
    the board's keys), turned into the device's config.json at deploy time.
    """

    name: str
    config: dict[str, Any]
    serial: SerialPort | None = None
    power: PowerPort | None = None
    virtual: VirtualBoard | None = None
    chip: str = "esp32"
    image: str = ""
    features: frozenset[str] = frozenset()

    @property
    def is_virtual(self) -> bool:
        return self.virtual is not None


@dataclass(frozen=True)
class LabSpec:
    """A whole lab: boards, gateway, features, timeouts; read from a lab file."""

    path: Path
    name: str
    kind: str  # one of LAB_TYPES
    mesh: str
    boards: tuple[BoardSpec, ...]
    gateway: Gateway | None
    features: frozenset[str] = frozenset()
    boot_s: float = 20.0  # power on -> first status line on the console
    join_s: float = 20.0  # booted -> the node knows a leader
    # Virtual labs only: namespace prefix and subnet of the hosts.
    prefix: str = "mh-"
    subnet: str = "10.96.0.0/24"
    gateway_args: tuple[str, ...] = field(default=())

    def board(self, name: str) -> BoardSpec:
        for board in self.boards:
            if board.name == name:
                return board
        raise KeyError("no board %r in lab %s (boards: %s)" % (name, self.name, self.names()))

    def names(self) -> list[str]:
        return [board.name for board in self.boards]

    def has(self, feature: str) -> bool:
        """True if the lab offers ``feature`` (lab-wide, or on every board)."""
        if feature in self.features:
            return True
        return bool(self.boards) and all(feature in board.features for board in self.boards)
