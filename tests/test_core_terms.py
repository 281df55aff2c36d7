"""Terms after a whole-site restart and against rogue frames: the core's rules.

- a node given the highest term it saw before a restart claims above it;
- a leader whose batch the gateway FENCED leads in a term above the gateway's at once, once
  per leadership (two leaders split by a partition do not take turns raising the fence);
- no term whose successor would not encode (u32) is ever adopted or claimed, and a jump of
  more than the step bound is dropped and counted unless corroborated.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.messages import CLAIM, HANDOFF, HEARTBEAT, LEAVE, Msg
from agent.core.node import ROLE_FOLLOWER, ROLE_LEADER, Config, Node

F_LEADER = 1
U32 = 2**32 - 1
STEP = 1 << 16  # node.py's _MAX_TERM_STEP


def lone_leader(term: int = 0) -> Node:
    node = Node("solo", Config(heartbeat_ms=100), term=term)
    node.start(0)
    while node.role != ROLE_LEADER:
        node.tick(node.wakeup)
    return node


def follower_of(term: int, leader: str = "boss") -> Node:
    node = Node("f")
    node.start(0)
    node.receive(Msg(HEARTBEAT, leader, term=term, flags=F_LEADER, score=900), now=10)
    assert (node.term, node.leader) == (term, leader)
    return node


def test_a_restarted_node_claims_above_the_term_it_saw_before() -> None:
    node = lone_leader(term=57)
    assert node.term == 58 and node.max_seen == 58
    assert lone_leader().term == 1  # nothing persisted: term 1 as before


def test_a_fenced_leader_leads_above_the_gateway_term_once() -> None:
    node = lone_leader()
    del node.events[:]
    node.fenced(500, 57)
    assert (node.role, node.term, node.leader, node.lead_reason) == (
        ROLE_LEADER,
        58,
        "solo",
        "fenced",
    )
    assert node.outbox[-1].kind == HEARTBEAT and node.outbox[-1].term == 58
    assert [e[0] for e in node.events] == ["term"]
    node.fenced(600, 70)  # fenced again in the same leadership: another leader exists
    assert node.term == 58
    node.fenced(700, U32 - 1)  # never beyond what the wire carries
    assert node.term == 58


def test_a_stale_fence_or_a_follower_changes_nothing() -> None:
    node = lone_leader(term=10)
    node.fenced(500, 3)  # the gateway's term is below ours: nothing to learn
    assert node.term == 11 and node.lead_reason == "start"
    f = follower_of(5)
    f.fenced(100, 50)
    assert (f.role, f.term) == (ROLE_FOLLOWER, 5)


def test_members_follow_their_leader_over_a_big_fence_jump() -> None:
    f = follower_of(1, "boss")
    f.tick(f.wakeup)  # running a while
    f.receive(Msg(HEARTBEAT, "boss", term=1 + 10 * STEP, flags=F_LEADER, score=900), now=200)
    assert (f.term, f.leader) == (1 + 10 * STEP, "boss")
    assert f.term_jumps == 0


def test_a_term_that_does_not_leave_room_on_the_wire_is_dropped() -> None:
    for term in (U32, U32 + 1):
        node = Node("n")
        node.start(0)  # even a booting node (any jump is plausible then)
        node.receive(Msg(HEARTBEAT, "rogue", term=term, flags=F_LEADER, score=1000), now=10)
        assert node.term == 0 and node.leader is None and node.max_seen == 0
        assert node.term_jumps == 1 and "rogue" not in node.peers


def test_an_uncorroborated_jump_is_dropped_and_counted() -> None:
    f = follower_of(3)
    for kind in (HEARTBEAT, CLAIM, HANDOFF, LEAVE):
        f.receive(Msg(kind, "rogue", term=3 + STEP + 1, flags=F_LEADER, score=1000), now=20)
    assert (f.term, f.leader, f.max_seen) == (3, "boss", 3)
    assert f.term_jumps == 4
    f.receive(Msg(HEARTBEAT, "rogue", term=3 + STEP, flags=F_LEADER, score=1000), now=30)
    assert f.term == 3 + STEP  # within the bound: a newer term, followed as ever


def test_a_jump_corroborated_by_a_second_sender_is_taken() -> None:
    f = follower_of(3)
    big = 3 + 5 * STEP
    f.receive(Msg(HEARTBEAT, "a", term=big, flags=F_LEADER, score=1000), now=20)
    assert f.term == 3
    f.receive(Msg(HEARTBEAT, "b", term=big, flags=0, score=500, heard=10), now=30)
    assert f.max_seen == big  # b reports a leader of that term: two senders agree
    f.receive(Msg(HEARTBEAT, "a", term=big, flags=F_LEADER, score=1000), now=40)
    assert (f.term, f.leader) == (big, "a")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([HEARTBEAT, CLAIM, HANDOFF, LEAVE]),
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 2**40),
            st.integers(0, 3),
        ),
        max_size=30,
    )
)
def test_no_frame_makes_a_node_hold_a_term_without_a_successor(frames) -> None:
    node = Node("n", Config(heartbeat_ms=100))
    node.start(0)
    now = 0
    for kind, sender, term, flags in frames:
        now += 37
        node.receive(Msg(kind, sender, term=term, flags=flags, score=700, target="n"), now)
        node.tick(now)
        node.fenced(now, term)
        assert node.term < U32 and node.max_seen < U32
    for _ in range(50):  # and it can still claim and lead
        now = max(now + 1, node.wakeup)
        node.tick(now)
        assert node.term < U32 and node.max_seen < U32
        for m in node.outbox:
            assert m.term < U32
