"""The fencing rule: which batch terms the gateway accepts, and which may move a mesh's fence.

A mesh's fence is the highest term of a batch the gateway has accepted for it. A batch below the
fence comes from a deposed leader and is answered FENCED. A batch at or above it moves the fence
up, and so fences out every leader of an older term: one frame with a huge term could shut the
real leader out for good. So the fence moves freely only for senders the gateway has seen in the
mesh before (in a stored batch's member view, or as a leader); a sender it has never seen may
raise it by at most ``STEP`` terms per batch, and a bigger jump is refused (answered REJECTED,
counted, raised as a ``term_jump`` alert). The first batch of a mesh the gateway has never seen
sets the fence whatever its term (trust on first use: the gateway may be new to a mesh whose
terms are long past ``STEP``). No term ever exceeds the wire's 32-bit range. An operator can
reset a fence (``meshelect gateway fence-reset``).

The rule is a pure function, used by the storage (inside the batch's write transaction, with
the database's knowledge of the mesh) and by the ingest path's provisional view while the
storage fails.
"""

from __future__ import annotations

from collections.abc import Callable

# Terms are 32-bit unsigned on the wire (docs/wire.md).
MAX_TERM = 2**32 - 1
# How far a sender the gateway has never seen in the mesh may raise its fence with one batch.
# A mesh's terms grow by one per election; 16 covers a gateway that missed a few elections.
STEP = 16

ACCEPT = "accept"
FENCED = "fenced"
REFUSED = "refused"


def decide(fence: int | None, term: int, known: Callable[[], bool]) -> str:
    """ACCEPT, FENCED or REFUSED for a batch of ``term`` against the mesh's ``fence``.

    ``fence`` is None for a mesh never seen; ``known()`` says whether the sender was seen in the
    mesh before (called only when that matters).
    """
    if not 0 <= term <= MAX_TERM:
        return REFUSED
    if fence is None:
        return ACCEPT
    if term < fence:
        return FENCED
    if term - fence <= STEP or known():
        return ACCEPT
    return REFUSED
