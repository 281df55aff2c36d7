"""The MQTT topics of a mesh: the one place their names are spelled (docs/design.md, "Transports").

Under a prefix P (``DEFAULT_PREFIX`` unless configured), per mesh:

    P/<mesh>/election             every election frame                  QoS 0
    P/<mesh>/readings/<leader>    member -> leader READINGS              QoS 1
    P/<mesh>/acks/<node>          leader -> member READINGS_ACK          QoS 1
    P/<mesh>/batch                leader -> gateway BATCH                QoS 1
    P/<mesh>/batch-ack/<leader>   gateway -> leader BATCH_ACK            QoS 1
    P/<mesh>/leader               retained CBOR [term, leader]           QoS 1
    P/<mesh>/status/<node>        retained ONLINE; the last will OFFLINE QoS 1
    P/<mesh>/update/<node>        host -> board update notice            QoS 1

Every frame on them is a wire frame, the same as on UDP, but for the update notice: the
signed datagram of ``meshelect firmware ota push`` (firmware/app/ota.py), byte for byte. The Pi agent, the firmware's MQTT runtime, the gateway, the OTA tool and the
test kit build their topics here. Runs on CPython and MicroPython (a board loads it only in
MQTT mode).
"""

DEFAULT_PREFIX = "meshelect"

# The topic kinds: the level after the mesh.
ELECTION = "election"
READINGS = "readings"
ACKS = "acks"
BATCH = "batch"
BATCH_ACK = "batch-ack"
LEADER = "leader"
STATUS = "status"
UPDATE = "update"

# The retained payloads of P/<mesh>/status/<node>.
ONLINE = b"online"
OFFLINE = b"offline"


def topic(prefix, mesh, kind, node=None):
    """``P/<mesh>/<kind>``, and ``/<node>`` after it for the topics of one node."""
    name = "%s/%s/%s" % (prefix, mesh, kind)
    return name if node is None else name + "/" + node


def qos(kind):
    """QoS 0 for election frames (a lost heartbeat is replaced by the next), else QoS 1
    (readings, acks and batches must arrive; the gateway and the collector drop duplicates)."""
    return 0 if kind == ELECTION else 1


def batch_filter(prefix):
    """The gateway's subscription: the batches of every mesh under ``prefix``."""
    return "%s/+/%s" % (prefix, BATCH)


def batch_mesh(prefix, name):
    """The mesh of the batch topic ``name`` under ``prefix``, or None for any other topic."""
    head = prefix + "/"
    tail = "/" + BATCH
    if not (name.startswith(head) and name.endswith(tail)):
        return None
    mesh = name[len(head) : len(name) - len(tail)]
    return mesh if mesh and "/" not in mesh else None
