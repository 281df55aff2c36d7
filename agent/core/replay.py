"""Replay a scenario on the real election core and print every change of view.

    python      -m agent.core.replay SCENARIO.json
    micropython -m agent.core.replay SCENARIO.json

Both print exactly the same text (the contract is docs/replay.md). Output lines:

    <t_ms> <node> <role> <term> <leader>     one per change of a node's view
    end <t_ms>
    final <node> <role> <term> <leader>      one per node, sorted by id
    stats messages=<sent> dropped=<dropped> elections=<terms started>
"""

import json
import sys

from agent.core.mesh import Mesh
from agent.core.node import ROLE_NAMES, Config

_OPS = ("start", "restart", "crash", "stop", "set", "partition", "heal", "loss", "end")


class ScenarioError(ValueError):
    """The scenario file is not valid; the message says where."""


def _int(obj, key, where, default=None, lo=None, hi=None):
    if key not in obj:
        if default is None:
            raise ScenarioError("%s: missing %r" % (where, key))
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError("%s: %r must be an integer" % (where, key))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ScenarioError("%s: %r out of range" % (where, key))
    return value


def _bool(obj, key, where, default):
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ScenarioError("%s: %r must be true or false" % (where, key))
    return value


def _step_nodes(step, where, known):
    if "nodes" in step:
        ids = step["nodes"]
        if not isinstance(ids, list):
            raise ScenarioError("%s: 'nodes' must be a list" % where)
    elif "node" in step:
        ids = [step["node"]]
    else:
        raise ScenarioError("%s: needs 'node' or 'nodes'" % where)
    for node_id in ids:
        if node_id not in known:
            raise ScenarioError("%s: unknown node %r" % (where, node_id))
    return ids


class Replay:
    """Loads a scenario (a dict, as parsed from JSON), runs it, and collects the output lines."""

    def __init__(self, scenario, write):
        if not isinstance(scenario, dict):
            raise ScenarioError("scenario must be a JSON object")
        self.write = write
        seed = _int(scenario, "seed", "scenario", 0)
        heartbeat_ms = _int(scenario, "heartbeat_ms", "scenario", 250)
        quorum = _int(scenario, "quorum", "scenario", 0)
        nodes = scenario.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise ScenarioError("scenario: 'nodes' must be a non-empty list")
        steps = scenario.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ScenarioError("scenario: 'steps' must be a non-empty list")
        try:  # the core's ranges, as every runtime's (docs/design.md, "Settings")
            config = Config(heartbeat_ms, quorum=quorum, max_peers=max(64, len(nodes)))
        except ValueError as e:
            raise ScenarioError("scenario: %s" % e) from None
        self.mesh = Mesh(config, seed=seed, on_change=self._changed)
        for i, spec in enumerate(nodes):
            where = "nodes[%d]" % i
            if not isinstance(spec, dict) or not isinstance(spec.get("id"), str):
                raise ScenarioError("%s: needs a string 'id'" % where)
            self.mesh.add(
                spec["id"],
                _int(spec, "battery", where, 1000, 0, 1000),
                _int(spec, "link", where, 1000, 0, 1000),
                _bool(spec, "mains", where, False),
                _bool(spec, "eligible", where, True),
            )
        self.steps = self._check_steps(steps)
        self._pending = []  # (node id, sequence, line) of the current millisecond
        self._pending_at = 0
        self._seq = 0

    def _check_steps(self, steps):
        last = 0
        known = self.mesh.nodes
        for i, step in enumerate(steps):
            where = "steps[%d]" % i
            if not isinstance(step, dict):
                raise ScenarioError("%s: must be an object" % where)
            at = _int(step, "at", where, None, 0)
            if at < last:
                raise ScenarioError("%s: steps must be in time order" % where)
            last = at
            op = step.get("op")
            if op not in _OPS:
                raise ScenarioError("%s: unknown op %r" % (where, op))
            if op in ("start", "restart", "crash", "stop"):
                _step_nodes(step, where, known)
            elif op == "set":
                _step_nodes(step, where, known)
                for key in ("battery", "link"):
                    if key in step:
                        _int(step, key, where, None, 0, 1000)
                for key in ("mains", "eligible"):
                    if key in step:
                        _bool(step, key, where, False)
            elif op == "partition":
                groups = step.get("groups")
                if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
                    raise ScenarioError("%s: 'groups' must be a list of lists" % where)
                for group in groups:
                    for node_id in group:
                        if node_id not in known:
                            raise ScenarioError("%s: unknown node %r" % (where, node_id))
            elif op == "loss":
                _int(step, "rate", where, None, 0, 1000)
        if steps[-1].get("op") != "end":
            raise ScenarioError("the last step must be 'end'")
        return steps

    def run(self):
        mesh = self.mesh
        end_at = 0
        for step in self.steps:
            at = step["at"]
            mesh.run_until(at - 1)
            mesh.now = at
            if step["op"] == "end":
                end_at = at
                break
            self._apply(step)
        self._flush()
        self.write("end %d" % end_at)
        for sim in mesh.order:
            role, term, leader = sim.view
            self.write("final %s %s %d %s" % (sim.id, ROLE_NAMES[role], term, leader or "-"))
        self.write(
            "stats messages=%d dropped=%d elections=%d"
            % (mesh.messages, mesh.dropped, mesh.terms_started())
        )

    def _apply(self, step):
        mesh = self.mesh
        op = step["op"]
        if op in ("start", "restart", "crash", "stop", "set"):
            ids = _step_nodes(step, "step", mesh.nodes)
            for node_id in sorted(ids):
                if op == "start":
                    mesh.start(node_id)
                elif op == "restart":
                    mesh.restart(node_id)
                elif op == "crash":
                    mesh.crash(node_id)
                elif op == "stop":
                    mesh.stop(node_id)
                else:
                    mesh.set_power(
                        node_id,
                        step.get("battery"),
                        step.get("link"),
                        step.get("mains"),
                        step.get("eligible"),
                    )
        elif op == "partition":
            mesh.partition(step["groups"])
        elif op == "heal":
            mesh.heal()
        elif op == "loss":
            mesh.set_loss(step["rate"])

    def _changed(self, now, sim):
        if now != self._pending_at:
            self._flush()
            self._pending_at = now
        role, term, leader = sim.view
        self._seq += 1
        line = "%d %s %s %d %s" % (now, sim.id, ROLE_NAMES[role], term, leader or "-")
        self._pending.append((sim.id, self._seq, line))

    def _flush(self):
        if self._pending:
            self._pending.sort()
            for entry in self._pending:
                self.write(entry[2])
            self._pending = []


def run_file(path, write):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ScenarioError("cannot read %s: %s" % (path, e)) from None
    try:
        scenario = json.loads(text)
    except ValueError as e:
        raise ScenarioError("%s is not valid JSON: %s" % (path, e)) from None
    Replay(scenario, write).run()


def cli(argv):
    """meshelect replay SCENARIO.json"""
    args = [a for a in argv if not a.startswith("-")]
    if any(a in ("-h", "--help") for a in argv) or len(args) != 1:
        print("usage: meshelect replay SCENARIO.json")
        print("Replays a scenario on the election core; see docs/replay.md.")
        return 0 if any(a in ("-h", "--help") for a in argv) else 2
    try:
        run_file(args[0], print)
    except ScenarioError as e:
        print("error: %s" % e)
        return 2
    return 0


def _main():
    try:
        import gc

        # MicroPython: collecting every 128 KB allocated runs a long replay about 13x faster
        # on the unix port than collecting only when its 2 MB heap is full.
        gc.threshold(131072)
    except (ImportError, AttributeError):
        pass
    # MicroPython's argv for "-m agent.core.replay X" and CPython's both end with the file.
    sys.exit(cli(sys.argv[1:]))


if __name__ == "__main__":
    _main()
