"""Pure helpers shared by the hardware layers (no machine access: testable on the unix port)."""

# A single Li-ion cell under light load: millivolts -> per-mille charge. Rough, but monotone;
# boards override it with ``hw.battery.curve`` measured on their own cells.
DEFAULT_CURVE = (
    (3300, 0),
    (3500, 50),
    (3600, 100),
    (3700, 300),
    (3800, 550),
    (3900, 700),
    (4000, 850),
    (4100, 950),
    (4200, 1000),
)


def interpolate(curve, x):
    """Piecewise-linear lookup in ``curve`` ((x, y) pairs sorted by x); clamped at both ends."""
    if not curve:
        return 0
    if x <= curve[0][0]:
        return curve[0][1]
    for i in range(1, len(curve)):
        x1, y1 = curve[i]
        if x <= x1:
            x0, y0 = curve[i - 1]
            return y0 + (y1 - y0) * (x - x0) // (x1 - x0)
    return curve[-1][1]


def check_curve(curve):
    """The curve as a tuple of int pairs with growing x; ValueError otherwise."""
    out = []
    last = None
    for point in curve:
        if len(point) != 2:
            raise ValueError("battery curve: points are [millivolts, permille]")
        x, y = int(point[0]), int(point[1])
        if last is not None and x <= last:
            raise ValueError("battery curve: millivolts must grow")
        if not 0 <= y <= 1000:
            raise ValueError("battery curve: permille must be 0..1000")
        last = x
        out.append((x, y))
    if not out:
        raise ValueError("battery curve: empty")
    return tuple(out)


def rssi_to_link(rssi_dbm):
    """Wi-Fi RSSI (dBm) -> link quality per-mille: -90 dBm or worse is 0, -40 or better 1000."""
    if rssi_dbm >= -40:
        return 1000
    if rssi_dbm <= -90:
        return 0
    return (rssi_dbm + 90) * 20


def led_on(state, now):
    """Whether the LED is on for the node's state at ``now``, from the time alone (no timers):
    leader solid, follower a short blink every 2 s, searching (candidate) fast blink, offline
    dark."""
    if state == "leader":
        return True
    if state == "offline":
        return False
    if state == "follower":
        return now % 2000 < 100
    return now % 200 < 100
