"""What a node's energy report says: its current by role, and how long its battery lasts.

A node reports the charge it spent as an ordinary reading (agent/core/energy.py): for each
role it has been in since it booted, ``nAh_<role>`` (nAh) and ``ms_<role>`` (ms in that role),
and ``mAh_cap``, its battery's capacity setting. The gateway keeps each node's latest report
(tracker) and turns it into the dashboard's figures here: the mean current in each role (mA,
the same as mAh spent per hour), over all roles, and the battery's projected life at that
rate from the battery level the mesh view reports. Leading costs more than following (the
leader receives every member's readings and sends the batches and acks); the two rates side
by side show by how much.
"""

from __future__ import annotations

from typing import Any

ROLES = ("leader", "member", "sleepy")
CAPACITY = "mAh_cap"


def is_report(metrics: dict[str, int]) -> bool:
    """Whether a reading's metrics are an energy report."""
    return CAPACITY in metrics


def view(report: dict[str, int] | None, battery: int, mains: bool) -> dict[str, Any] | None:
    """The dashboard's figures for a node's latest ``report`` and ``battery`` (per mille):
    ``{"roles": {role: {"mA", "hours"}}, "mA", "life_h"}`` (``life_h`` None on mains or
    with nothing spent yet)."""
    if not report:
        return None
    roles: dict[str, Any] = {}
    total_nah = 0
    total_ms = 0
    for role in ROLES:
        nah = report.get("nAh_" + role)
        ms = report.get("ms_" + role)
        if nah is None or not ms or ms <= 0:
            continue
        roles[role] = {"mA": round(nah * 3.6 / ms, 3), "hours": round(ms / 3_600_000, 3)}
        total_nah += nah
        total_ms += ms
    if not total_ms:
        return None
    ma = total_nah * 3.6 / total_ms  # nAh per ms: x 3.6e6 ms/h / 1e6 nAh/mAh
    life = None
    if not mains and ma > 0:
        life = round(max(0, battery) / 1000 * report.get(CAPACITY, 0) / ma, 1)
    return {
        "roles": roles,
        "mA": round(ma, 3),
        "capacity_mah": report.get(CAPACITY),
        "life_h": life,
    }
