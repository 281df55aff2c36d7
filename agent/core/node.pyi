from collections.abc import Callable, Mapping
from typing import Any, Final

from agent.core.messages import Msg
from agent.core.peers import PeerTable
from agent.core.prng import Prng
from agent.core.score import Weights

ROLE_DOWN: Final = 0
ROLE_FOLLOWER: Final = 1
ROLE_CANDIDATE: Final = 2
ROLE_LEADER: Final = 3
ROLE_NAMES: tuple[str, str, str, str]

MAX_NODE_ID_BYTES: Final = 16
HEARD_NONE: Final = 65535

class Config:
    heartbeat_ms: int
    margin: int
    quorum: int
    max_peers: int
    weights: Weights
    suspect_intervals: int
    listen_intervals: int
    probes: int
    probe_ms: int
    suspect_ms: int
    listen_ms: int
    live_ms: int
    forget_ms: int
    claim_slot_ms: int
    majority: int
    def __init__(
        self,
        heartbeat_ms: int = 250,
        margin: int = 150,
        quorum: int = 0,
        max_peers: int = 64,
        weights: Weights | None = None,
        suspect_intervals: int = 3,
        listen_intervals: int = 2,
        probes: int = 0,
        probe_ms: int | None = None,
    ) -> None: ...

def make_config(
    heartbeat_ms: int = 250,
    election: Mapping[str, int | None] | None = None,
    score: Mapping[str, int | None] | None = None,
) -> Config: ...

class Node:
    id: str
    config: Config
    boot: int
    prng: Prng
    outbox: list[Msg]
    # (kind, role, term, leader, lead_reason, previous role): view changes, emptied by the caller
    events: list[tuple[str, int, int, str | None, str | None, int]]
    wakeup: int
    sent: int
    stats_terms_started: int
    suspicions: int
    handoffs: int
    term_jumps: int
    max_seen: int
    battery: int
    link: int
    mains: bool
    eligible: bool
    score: int
    peers: PeerTable
    role: int
    term: int
    leader: str | None
    lead_reason: str | None
    def __init__(
        self,
        node_id: str,
        config: Config | None = None,
        boot: int = 0,
        seed: int = 0,
        term: int = 0,
    ) -> None: ...
    def fenced(self, now: int, term: int) -> None: ...
    def set_power(
        self, battery: int, link: int, mains: bool = False, eligible: bool = True
    ) -> None: ...
    def start(self, now: int) -> None: ...
    def stop(self, now: int) -> None: ...
    def crash(self) -> None: ...
    def tick(self, now: int) -> None: ...
    def receive(self, msg: Msg, now: int) -> None: ...
    @property
    def role_name(self) -> str: ...
    def phase(self, now: int) -> int: ...

# One row per role (None for ROLE_DOWN): per event, the handler and the roles it may lead to.
MACHINE: tuple[tuple[Callable[..., Any] | int | None, ...] | None, ...]
