"""Past 12.4 days of uptime on a 32-bit board (2**30 ms, where its small ints end), the node
allocates no long int per step: the runtime sets its clock back (NodeApp.rebase). Measured on
the 32-bit stand-in by tests/mpy/fw_wrap.py: a leader of 10 members, the same 59 s from a clock
at 0 and from 12.4 days less 3 s, in bytes allocated (garbage included)."""

from __future__ import annotations

import json

import pytest

from testkit.mpy import run_micropython
from tests.paths import MPY_SCRIPTS, REPO_ROOT

pytestmark = [pytest.mark.micropython]


def test_no_long_int_per_step_past_12_days_on_a_32_bit_board() -> None:
    # The script sets the clock back as the runtime does.
    runtime = (REPO_ROOT / "firmware" / "app" / "runtime.py").read_text()
    script = (MPY_SCRIPTS / "fw_wrap.py").read_text()
    for name, value in (("REBASE_AT", "1 << 29"), ("REBASE_MS", "1 << 28")):
        assert "_%s = const(%s)" % (name, value) in runtime
        assert "%s = %s" % (name, value) in script
    rc, out = run_micropython(
        MPY_SCRIPTS / "fw_wrap.py", path=[REPO_ROOT / "firmware" / "lib"], heapsize="2M", bits=32
    )
    assert rc == 0, out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["errors"] == [0, 0, 0], figures
    assert min(figures["batches_acked"]) > 50, figures  # a leader at work: readings, batches
    # Set back as the runtime does: byte for byte what the same steps allocate from 0.
    assert figures["bytes_rebased"] == figures["bytes_from_0"], figures
    # The measure sees long ints: without setting the clock back, every step makes some.
    assert figures["bytes_not_rebased"] > figures["bytes_from_0"] + 100 * figures["steps"], figures
    print(
        "bytes allocated over %d steps: from 0 %d, past 12.4 days %d (clock set back), %d (not)"
        % (
            figures["steps"],
            figures["bytes_from_0"],
            figures["bytes_rebased"],
            figures["bytes_not_rebased"],
        )
    )
