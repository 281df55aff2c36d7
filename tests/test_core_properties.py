"""Property-based tests of the election's safety and liveness rules, on the in-memory mesh.

Hypothesis builds random meshes and random schedules of crashes, restarts, graceful stops,
score changes, loss and partitions, and the real core runs them. Then:

- terms never go down within one boot, and a leader always follows itself;
- on a reliable network (no loss, no partition), never two leaders in one term;
- after the network has been quiet and connected for a while, exactly one leader that every
  live node follows, in the highest term any live node holds.

What is *not* claimed: under loss or partition two nodes may briefly lead in the same term (two
partitions can both start term N; a claim lost to one node lets it claim the same term). Terms
still fence them, and the quiet-network property shows that it always resolves.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.core.mesh import Mesh
from agent.core.node import ROLE_DOWN, ROLE_LEADER, ROLE_NAMES, Config
from tests.corecheck import Output, View, assert_settled, check_safety, leaders_by_term

HEARTBEAT_MS = 250
QUIET_MS = 10_000  # 40 heartbeat intervals of a quiet, connected network

node_spec = st.fixed_dictionaries(
    {
        "battery": st.integers(0, 1000),
        "link": st.integers(0, 1000),
        "mains": st.booleans(),
        "eligible": st.booleans(),
    }
)


def event(n: int, faults: bool) -> st.SearchStrategy:
    node = st.integers(0, n - 1)
    ops = [
        st.tuples(st.just("crash"), node),
        st.tuples(st.just("restart"), node),
        st.tuples(st.just("stop"), node),
        st.tuples(st.just("start"), node),
        st.tuples(st.just("set"), node, st.integers(0, 1000), st.integers(0, 1000)),
    ]
    if faults:
        ops += [
            st.tuples(st.just("loss"), st.integers(0, 300)),
            st.tuples(st.just("partition"), st.lists(st.integers(0, 2), min_size=n, max_size=n)),
            st.tuples(st.just("heal")),
        ]
    return st.tuples(st.integers(1, 3000), st.one_of(ops))


@st.composite
def schedules(draw: st.DrawFn, faults: bool) -> tuple[list[dict], list[tuple]]:
    n = draw(st.integers(2, 7))
    specs = draw(st.lists(node_spec, min_size=n, max_size=n))
    specs[draw(st.integers(0, n - 1))]["eligible"] = True  # someone can lead
    events = draw(st.lists(event(n, faults), max_size=12))
    return specs, events


def run(specs: list[dict], events: list[tuple]) -> tuple[Mesh, Output]:
    out = Output()

    def changed(now: int, sim) -> None:
        role, term, leader = sim.view
        out.changes.append((now, sim.id, View(ROLE_NAMES[role], term, leader)))

    mesh = Mesh(Config(heartbeat_ms=HEARTBEAT_MS), seed=len(events), on_change=changed)
    ids = ["n%d" % i for i in range(len(specs))]
    for node_id, spec in zip(ids, specs, strict=True):
        mesh.add(node_id, **spec)
    for node_id in ids:
        mesh.start(node_id)
    for delay, (op, *args) in events:
        mesh.run_until(mesh.now + delay)
        if op in ("crash", "restart", "stop", "start"):
            getattr(mesh, op)(ids[args[0]])
        elif op == "set":
            mesh.set_power(ids[args[0]], battery=args[1], link=args[2])
        elif op == "loss":
            mesh.set_loss(args[0])
        elif op == "partition":
            groups: list[list[str]] = [[], [], []]
            for node_id, g in zip(ids, args[0], strict=True):
                groups[g].append(node_id)
            mesh.partition(groups)
        else:
            mesh.heal()
    # Quiet and connected from here on; make sure someone who can lead is up.
    mesh.heal()
    mesh.set_loss(0)
    if not any(s.up and s.eligible for s in mesh.order):
        mesh.start(next(s.id for s in mesh.order if s.eligible))
    mesh.run_until(mesh.now + QUIET_MS)
    out.end = mesh.now
    return mesh, out


def check_quiet_end(mesh: Mesh, out: Output) -> None:
    views = out.view_at(out.end)
    live = [s.id for s in mesh.order if s.up]
    leader = assert_settled(views, live, None, out.end)
    assert views[leader].term == max(views[n].term for n in live)
    lead = mesh.nodes[leader].node
    assert lead.role == ROLE_LEADER and lead.score >= 0, "an ineligible node leads"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules(faults=False))
def test_reliable_network_never_two_leaders_in_one_term(schedule) -> None:
    mesh, out = run(*schedule)
    check_safety(out)
    # Leaders of one term, at any moment: replay the changes, tracking who leads now.
    leading: dict[str, int] = {}
    for _, node, view in out.changes:
        leading.pop(node, None)
        if view.role == "leader":
            leading[node] = view.term
        terms = list(leading.values())
        assert len(terms) == len(set(terms)), "two leaders in one term: %r" % leading
    check_quiet_end(mesh, out)


# Found by hypothesis: a partition, then the leader of one side crashes. After the heal its
# (ineligible) follower heard the other leader of the same term, but the peers' reports of
# "their leader" (that other one) kept its dead leader alive in its view, for ever.
_DEAD_LEADER_KEPT = (
    [
        {"battery": 0, "link": 0, "mains": False, "eligible": e}
        for e in (True, False, False, False, True, False)
    ],
    [(1, ("crash", 1)), (184, ("partition", [1, 0, 0, 0, 0, 1])), (321, ("crash", 0))],
)


# Found by hypothesis: both eligible nodes claim term 1 across a partition; the winner of the
# bigger side restarts and follows the other one (term 1 as well) after the heal. Its old
# followers kept it as their leader: its follower heartbeats kept its peer entry fresh, and its
# reports of hearing "its leader" (the other one) kept their evidence of a leader alive.
_RESTARTED_LEADER_KEPT = (
    [{"battery": 0, "link": 0, "mains": False, "eligible": e} for e in (True, False, False, True)],
    [(1, ("set", 0, 0, 0)), (1, ("partition", [0, 0, 0, 1])), (508, ("restart", 0))],
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules(faults=True))
@example(_DEAD_LEADER_KEPT)
@example(_RESTARTED_LEADER_KEPT)
def test_faults_then_quiet_gives_exactly_one_leader(schedule) -> None:
    mesh, out = run(*schedule)
    check_safety(out)
    check_quiet_end(mesh, out)
    assert leaders_by_term(out)  # somebody led at some point
    assert all(s.node.role != ROLE_DOWN for s in mesh.order if s.up)
