"""Breaking `meshelect demo` on purpose: kill the leader, stop it, drain its battery, partition.

Each action works on the real processes and files of the demo's nodes, never on the election
core: what follows is the mesh's own doing, and the gateway's election list shows its reason.

| action | what it does | what the election list shows next |
|---|---|---|
| `kill` | SIGKILL to the leader's process | a new leader, reason `crash` |
| `stop` | SIGTERM to the leader: it hands over as it goes | a new leader, reason `handoff` |
| `drain` | the leader's simulated battery drops to `DRAINED` per mille (its battery set file) | a new leader, reason `low battery` |
| `partition` | each half of the agents drops the other half's frames (their faults files, agent/faults.py) | a leader on each side (`crash` on the side that lost it; the other side's leader, whose batches the gateway now fences, leads on a term above: `fenced`), a `two leaders` alert |
| `heal` | the faults files are emptied | one leader again, the better one: `partition merge` if it claims a term above both, nothing new if it held the higher term already |

The leader is the running node whose status file (rewritten by the node at least every 2 s)
says it leads, in the highest term when a partition gives two. Firmware nodes (the MicroPython
unix port) can be killed; they have no faults or battery files, so `partition` refuses while
they run rather than leave them as a bridge between the halves.

Every action returns an event (a dict) that the demo prints and sends to the gateway, which
shows it in the dashboard's election list: ``{"mesh", "action", "node", "text", "source",
"at_ms"}``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from agent.children import Child

STATUS_FRESH_S = 4.0  # a status file older than this is from a node that stopped writing
DRAINED = 160  # per mille: below the default low-battery threshold (200), above the demo's swap

ACTIONS = {
    "kill": "kill -9 the leader",
    "stop": "stop the leader gracefully",
    "drain": "drain the leader's battery",
    "partition": "partition the mesh in two",
    "heal": "heal the partition",
}


class ActionError(Exception):
    """An action that cannot be done now (no leader, nothing to heal...); the message says why."""


class DemoNode:
    """One node of the demo: its process and the files the actions use."""

    def __init__(
        self,
        child: Child,
        status_path: str,
        faults_path: str | None = None,
        battery_path: str | None = None,
    ) -> None:
        self.child = child
        self.name = child.name
        self.status_path = status_path
        self.faults_path = faults_path  # None: a firmware node (no faults file)
        self.battery_path = battery_path
        if battery_path is not None:
            child.before_start = self.keep_battery

    def keep_battery(self) -> None:
        """A battery does not refill when its node restarts: the node starts again at the
        level its last status showed (through its battery set file)."""
        assert self.battery_path is not None
        try:
            with open(self.status_path) as f:
                battery = json.load(f).get("battery")
        except (OSError, ValueError, AttributeError):
            return  # first start, or no status yet: the configured battery_start
        if type(battery) is int and not os.path.exists(self.battery_path):
            _write(self.battery_path, "%d\n" % battery)

    def status(self, now: float) -> dict[str, Any] | None:
        """The node's status file if it is fresh and the node runs, else None."""
        if not self.child.running():
            return None
        try:
            if now - os.stat(self.status_path).st_mtime > STATUS_FRESH_S:
                return None
            with open(self.status_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


class Actions:
    def __init__(
        self, mesh: str, nodes: list[DemoNode], clock: Callable[[], float] = time.time
    ) -> None:
        self.mesh = mesh
        self.nodes = nodes
        self.clock = clock
        self.halves: tuple[list[str], list[str]] | None = None

    def leader(self) -> DemoNode:
        now = self.clock()
        best: tuple[int, str] | None = None
        found: DemoNode | None = None
        for node in self.nodes:
            status = node.status(now)
            if status is None or status.get("role") != "leader" or node.child.on_purpose:
                continue  # not leading, or on its way out (stopped, killed) already
            term = status.get("term")
            key = (term if isinstance(term, int) else 0, node.name)
            if best is None or key > best:
                best, found = key, node
        if found is None:
            raise ActionError("no leader right now (an election may be under way)")
        return found

    def do(self, action: str, source: str) -> dict[str, Any]:
        """Carry out ``action``; the event that says what was done. ActionError if it cannot."""
        # The time it was done is taken before doing it: what it causes (an election) comes after.
        at_ms = int(self.clock() * 1000)
        if action == "kill":
            node = self.leader()
            node.child.on_purpose = True
            node.child.signal(signal.SIGKILL)
            text = "kill -9 %s (the leader, pid %s)" % (node.name, node.child.pid)
        elif action == "stop":
            node = self.leader()
            node.child.on_purpose = True
            node.child.signal(signal.SIGTERM)
            text = "stop %s gracefully (the leader): it hands over" % node.name
        elif action == "drain":
            node = self.leader()
            if node.battery_path is None:
                raise ActionError(
                    "the leader %s is a firmware node: no battery to drain" % node.name
                )
            _write(node.battery_path, "%d\n" % DRAINED)
            text = "drain %s's battery to %d%% (the leader)" % (node.name, DRAINED // 10)
        elif action == "partition":
            text = self._partition()
            node = None
        elif action == "heal":
            text = self._heal()
            node = None
        else:
            raise ActionError("unknown action %r (one of %s)" % (action, ", ".join(ACTIONS)))
        return {
            "mesh": self.mesh,
            "action": action,
            "node": node.name if node is not None else None,
            "text": text,
            "source": source,
            "at_ms": at_ms,
        }

    def _partition(self) -> str:
        if self.halves is not None:
            raise ActionError("the mesh is partitioned already (heal it first)")
        if any(node.faults_path is None and node.child.running() for node in self.nodes):
            raise ActionError("firmware nodes cannot be partitioned (they take no faults file)")
        names = [node.name for node in self.nodes if node.faults_path is not None]
        if len(names) < 2:
            raise ActionError("a partition needs two agents at least")
        cut = len(names) // 2
        self.halves = (names[:cut], names[cut:])
        for node in self.nodes:
            if node.faults_path is not None:
                other = self.halves[1] if node.name in self.halves[0] else self.halves[0]
                _write(node.faults_path, json.dumps({"drop_from": other}) + "\n")
        return "partition: {%s} | {%s}" % (", ".join(self.halves[0]), ", ".join(self.halves[1]))

    def _heal(self) -> str:
        if self.halves is None:
            raise ActionError("the mesh is not partitioned")
        for node in self.nodes:
            if node.faults_path is not None:
                _write(node.faults_path, json.dumps({"drop_from": []}) + "\n")
        self.halves = None
        return "heal the partition: every agent hears every other again"


def _write(path: str, text: str) -> None:
    """Atomically: a node never reads half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
