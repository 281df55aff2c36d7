"""The benchmark script runs (quick mode) and prints its figures; no timing is asserted."""

from __future__ import annotations

import pytest

from tools.bench.gateway import main


@pytest.mark.slow
def test_bench_quick_prints_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick"]) == 0
    out = capsys.readouterr().out
    for phrase in ("raw SQLite bound", "of the raw bound", "end to end over UDP", "median"):
        assert phrase in out
