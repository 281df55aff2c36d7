"""A partition heals between two leaders whose scores are 90 points apart (inside the 150-point
margin): real agents in namespaces, the real gateway. Exactly one leader remains, the better
one, in a term above both sides' (hysteresis protects a sitting leader from a better follower,
not from a better leader: docs/design.md, "Partition merge").
"""

from __future__ import annotations

import pytest

from testkit.meshlab import MeshUnderTest
from tests.test_agent_netns import _dump, _leaders

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WAIT_S = 30.0


def test_after_a_heal_the_better_leader_leads_both_sides() -> None:
    mesh = MeshUnderTest(4, "udp", mesh="t-merge", sample_ms=300)
    try:
        with mesh:
            # Batteries 1000 and 850: scores 90 apart when the links are alike.
            for host, battery in ((1, 1000), (2, 300), (3, 850), (4, 250)):
                mesh.start_agent(host, battery)
            assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", WAIT_S), _dump(mesh)
            mesh.lab.partition([[1, 2, 5], [3, 4]])
            assert mesh.wait_for(
                lambda: (
                    _leaders(mesh, [3, 4]).get(3, ("",))[:2] == ("leader", "n3")
                    and _leaders(mesh, [3, 4]).get(4, ("", ""))[1] == "n3"
                ),
                WAIT_S,
            ), _dump(mesh)
            views = _leaders(mesh, [1, 2, 3, 4])
            assert views[1][:2] == ("leader", "n1")
            split_term = max(v[2] for v in views.values())
            scores = {h: s["score"] for h, s in mesh.statuses().items()}
            assert 0 < scores[1] - scores[3] <= 150, scores

            mesh.lab.heal()

            def merged() -> bool:
                views = _leaders(mesh, [1, 2, 3, 4])
                return (
                    len(views) == 4
                    and mesh.agreed_leader() == "n1"
                    and [h for h, v in views.items() if v[0] == "leader"] == [1]
                    and all(term > split_term for _, _, term in views.values())
                )

            assert mesh.wait_for(merged, WAIT_S), _dump(mesh)
    finally:
        mesh.cleanup()
