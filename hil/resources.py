"""meshelect's labgrid resources: passive descriptions of what a lab has.

Registered with labgrid's target factory, so environment YAML names them like labgrid's own
(``RawSerialPort``, ``USBPowerPort``, ``NetworkService``...). Drivers act on them
(``hil.drivers``). Every field is a plain scalar, so an exporter can publish them to a
coordinator unchanged (labgrid exports a class it does not know as its parameters).

Resources of a virtual bench come in two forms: in a local environment a resource names the
target whose ``VirtualBench`` made it (``bench:``) and its host number, and its driver asks
that bench for the namespace and folder once the bench is built; a farm's exporter publishes
them with those values filled in (``netns``, ``address``, ``folder``).
"""

from __future__ import annotations

import attr
from labgrid.factory import target_factory
from labgrid.resource.common import Resource

_str = attr.validators.instance_of(str)
_int = attr.validators.instance_of(int)
_bool = attr.validators.instance_of(bool)


@target_factory.reg_resource
@attr.s(eq=False)
class VirtualBench(Resource):
    """Network namespaces for ``boards`` virtual boards, the gateway and (``transport:
    mqtt``) a broker: see ``hil.bench``. ``mesh``/``mesh_key`` are what the gateway accepts."""

    boards: int = attr.ib(validator=_int)
    mesh: str = attr.ib(validator=_str)
    mesh_key: str = attr.ib(default="", validator=_str)
    transport: str = attr.ib(default="udp", validator=_str)
    prefix: str = attr.ib(default="mh-", validator=_str)
    subnet: str = attr.ib(default="10.96.0.0/24", validator=_str)
    gateway_args: str = attr.ib(default="", validator=_str)  # extra gateway options, shell words


@target_factory.reg_resource
@attr.s(eq=False)
class MicroPythonUnixPort(Resource):
    """A slot for a virtual board: a folder as its flash, a namespace as its radio.

    ``interpreter``: the MicroPython unix port to run the firmware on (a name on PATH or in
    the venv, or a path), e.g. a 32-bit build standing in for an ESP32's word size.
    ``heapsize``: ``micropython -X heapsize=...`` (a small board's RAM), "" for the default.
    """

    host: int = attr.ib(validator=_int)
    bench: str = attr.ib(default="bench", validator=_str)
    netns: str = attr.ib(default="", validator=_str)
    address: str = attr.ib(default="", validator=_str)
    folder: str = attr.ib(default="", validator=_str)
    interpreter: str = attr.ib(default="micropython", validator=_str)
    heapsize: str = attr.ib(default="", validator=_str)


@target_factory.reg_resource
@attr.s(eq=False)
class MeshGateway(Resource):
    """The gateway's HTTP API. ``netns``: reached from inside that network namespace (a
    virtual bench's gateway listens on its own namespace's loopback). With ``bench`` and no
    ``url``, the URL and namespace are that bench's gateway."""

    url: str = attr.ib(default="", validator=_str)
    netns: str = attr.ib(default="", validator=_str)
    bench: str = attr.ib(default="", validator=_str)


@target_factory.reg_resource
@attr.s(eq=False)
class MeshBroker(Resource):
    """The MQTT broker the mesh uses. ``restart_cmd``: how to restart it on a real bench (e.g.
    ``ssh gw sudo systemctl restart mosquitto``); with ``bench``, it is that bench's broker."""

    address: str = attr.ib(default="", validator=_str)  # host:port
    restart_cmd: str = attr.ib(default="", validator=_str)
    bench: str = attr.ib(default="", validator=_str)
