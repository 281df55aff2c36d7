"""Who is the better leader: the score, and the order that breaks ties.

A score is an integer from 0 to ``SCORE_MAX`` (1000), or ``INELIGIBLE`` (-1) for a node that
never leads. It weighs the energy a node can spend (battery charge in per-mille, or full when on
mains power) against the quality of its link (per-mille; the runtime derives it from loss,
round-trip time and RSSI). A node off mains whose battery is below the low-battery threshold has
its score divided by 4, so it leads only when nobody healthy can: this is the LEACH/HEED idea of
rotating the costly aggregator role by residual energy.

Ties break by node id: the smaller id wins. Every node computes the same order from the same
numbers, so every node reaches the same decision without a vote.
"""

try:
    from micropython import const  # built in on a board: no _compat module to load
except ImportError:  # CPython
    from agent.core._compat import const

SCORE_MAX = const(1000)
INELIGIBLE = const(-1)

# Default weights: energy counts a little more than the link, because a leader that drains its
# battery fails the whole mesh, while a weaker link only costs retries. Weights are relative.
_DEFAULT_BATTERY_WEIGHT = const(600)
_DEFAULT_LINK_WEIGHT = const(400)
# Below 20% charge a battery node should stop aggregating (the Thread leader-weight idea: a
# battery-powered router is a poor leader). The same threshold triggers a leader's handoff.
_DEFAULT_LOW_BATTERY = const(200)
_LOW_BATTERY_DIVISOR = const(4)
# Weights are relative: a million leaves room for any ratio and keeps weight * 1000 small.
_MAX_WEIGHT = const(1000000)


def _setting(kind, name, value, lo, hi):
    # ``value``, if it is an int within lo..hi; else a ValueError that names the setting as
    # the config files do (kind "election", name "quorum": "election.quorum: ..."; kind None
    # for a top-level one), for a runtime to show as it is. The election's Config (node.py)
    # checks its settings with it too. On a board every distinct short string and argument
    # name is interned for good, and the process is a few names short of a bigger pool: so
    # the table and the name come apart (both interned already), and the arguments are named
    # as elsewhere in the core.
    if type(value) is not int or not lo <= value <= hi:
        key = name if kind is None else "%s.%s" % (kind, name)
        raise ValueError("%s: must be an integer within %d..%d, got %r" % (key, lo, hi, value))
    return value


class Weights:
    """Score weights; plain class so it runs on MicroPython. The settings of the ``[score]``
    table of both runtimes' config files, checked here (errors name them so)."""

    def __init__(
        self,
        battery=_DEFAULT_BATTERY_WEIGHT,
        link=_DEFAULT_LINK_WEIGHT,
        low_battery=_DEFAULT_LOW_BATTERY,
    ):
        self.battery = _setting("score", "battery", battery, 0, _MAX_WEIGHT)
        self.link = _setting("score", "link", link, 0, _MAX_WEIGHT)
        if battery + link <= 0:
            raise ValueError("score.battery: score.battery and score.link cannot both be 0")
        self.low_battery = _setting("score", "low_battery", low_battery, 0, SCORE_MAX)


DEFAULT_WEIGHTS = Weights()


def is_low_battery(battery, mains, weights=DEFAULT_WEIGHTS):
    return (not mains) and battery < weights.low_battery


def compute_score(battery, link, mains=False, eligible=True, weights=DEFAULT_WEIGHTS):
    """The node's score, an int in 0..1000, or INELIGIBLE."""
    if not eligible:
        return INELIGIBLE
    # Inputs are clamped to 0..SCORE_MAX (min/max: one function object less than a helper).
    energy = SCORE_MAX if mains else min(max(battery, 0), SCORE_MAX)
    total = weights.battery + weights.link
    score = (weights.battery * energy + weights.link * min(max(link, 0), SCORE_MAX)) // total
    if is_low_battery(battery, mains, weights):
        score //= _LOW_BATTERY_DIVISOR
    return score


def better(score_a, id_a, score_b, id_b):
    """True when node a ranks above node b: higher score, then smaller id."""
    if score_a != score_b:
        return score_a > score_b
    return id_a < id_b
