"""Link quality, per-mille, from heartbeat loss, round-trip time and (when present) Wi-Fi signal.

Loss: every peer is expected to send one heartbeat per interval; over a sliding window we
compare heartbeats heard with heartbeats expected since we first heard the peer. RTT: samples
from exchanges that really cross the network (MQTT: our own frame echoed by the broker; UDP:
a batch and its BATCH_ACK). The link is the worst of the loss figure and the Wi-Fi figure,
scaled down when the RTT is poor.
"""

from __future__ import annotations

WINDOW_INTERVALS = 20  # heartbeats per window: 5 s at 250 ms, enough to see 5% loss
GOOD_RTT_MS = 50
BAD_RTT_MS = 1000
RTT_SAMPLES = 16
FORGET_INTERVALS = 8  # a peer silent this long has left; its gap is not "loss"


class _PeerWindow:
    __slots__ = ("first_ms", "times")

    def __init__(self, now: int) -> None:
        self.first_ms = now
        self.times: list[int] = []


class LinkQuality:
    def __init__(self, heartbeat_ms: int) -> None:
        self.heartbeat_ms = heartbeat_ms
        self.window_ms = heartbeat_ms * WINDOW_INTERVALS
        self.peers: dict[str, _PeerWindow] = {}
        self.rtts: list[int] = []
        self.wifi: int | None = None

    def heard(self, peer: str, now: int) -> None:
        window = self.peers.get(peer)
        if window is None:
            window = self.peers[peer] = _PeerWindow(now)
        window.times.append(now)
        cutoff = now - self.window_ms
        while window.times and window.times[0] < cutoff:
            del window.times[0]

    def forget(self, peer: str) -> None:
        self.peers.pop(peer, None)

    def rtt_sample(self, rtt_ms: int) -> None:
        self.rtts.append(max(0, rtt_ms))
        if len(self.rtts) > RTT_SAMPLES:
            del self.rtts[0]

    def loss_per_mille(self, now: int) -> int | None:
        """Mean heartbeat loss over peers heard recently; None when no peer is known."""
        losses = []
        for peer in sorted(self.peers):
            window = self.peers[peer]
            if not window.times or now - window.times[-1] > FORGET_INTERVALS * self.heartbeat_ms:
                continue
            span = min(self.window_ms, now - window.first_ms)
            expected = span // self.heartbeat_ms
            if expected < 4:
                continue  # too new to judge
            heard = sum(1 for t in window.times if t >= now - span)
            # One heartbeat of slack: jitter moves a heartbeat across the window's edge.
            losses.append(max(0, (expected - heard - 1) * 1000 // expected))
        if not losses:
            return None
        return sum(losses) // len(losses)

    def rtt_ms(self) -> int | None:
        if not self.rtts:
            return None
        ordered = sorted(self.rtts)
        return ordered[len(ordered) // 2]

    def link(self, now: int) -> int:
        loss = self.loss_per_mille(now)
        link = 1000 if loss is None else 1000 - loss
        if self.wifi is not None:
            link = min(link, self.wifi)
        rtt = self.rtt_ms()
        if rtt is not None and rtt > GOOD_RTT_MS:
            # Linear from full at GOOD_RTT_MS down to half at BAD_RTT_MS and beyond.
            over = min(rtt, BAD_RTT_MS) - GOOD_RTT_MS
            link = link * (2000 - over * 1000 // (BAD_RTT_MS - GOOD_RTT_MS)) // 2000
        return max(0, min(1000, link))
