from typing import Final

DEFAULT_PREFIX: Final = "meshelect"

ELECTION: Final = "election"
READINGS: Final = "readings"
ACKS: Final = "acks"
BATCH: Final = "batch"
BATCH_ACK: Final = "batch-ack"
LEADER: Final = "leader"
STATUS: Final = "status"
UPDATE: Final = "update"

ONLINE: Final = b"online"
OFFLINE: Final = b"offline"

def topic(prefix: str, mesh: str, kind: str, node: str | None = None) -> str: ...
def qos(kind: str) -> int: ...
def batch_filter(prefix: str) -> str: ...
def batch_mesh(prefix: str, name: str) -> str | None: ...
