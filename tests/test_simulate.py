"""meshelect simulate: energy models, the literature's election rules, determinism, the command."""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main as meshelect
from tools.simulate.energy import Esp32, FirstOrderRadio
from tools.simulate.field import Field, scheme_rng
from tools.simulate.literature import (
    SINK,
    Heed,
    epoch_rounds,
    heed_probability,
    leach,
    leach_threshold,
    sep,
    sep_probabilities,
)
from tools.simulate.run import SCHEMES, Options, make_setup, play, simulate

K = 4000  # bits per packet


# ---- energy models ----------------------------------------------------------------------


def test_first_order_radio_per_packet_energies() -> None:
    radio = FirstOrderRadio()
    assert radio.d0 == pytest.approx(87.7058, abs=1e-4)  # sqrt(10 / 0.0013)
    # 4000 x 50 nJ = 200 uJ of electronics, plus 4000 x 10 pJ x 50^2 = 100 uJ of amplifier
    assert radio.tx(K, np.array([50.0]))[0] == pytest.approx(300e-6)
    assert radio.tx(K, np.array([0.0]))[0] == pytest.approx(200e-6)
    # beyond d0 the d^4 term: 4000 x 0.0013 pJ x 100^4 = 520 uJ
    assert radio.tx(K, np.array([100.0]))[0] == pytest.approx(720e-6)
    # both amplifier terms meet at d0
    below, above = radio.tx(K, np.array([radio.d0 - 1e-9, radio.d0]))
    assert below == pytest.approx(above)
    assert radio.rx(K) == pytest.approx(200e-6)
    assert radio.aggregate(K, np.array([5]))[0] == pytest.approx(100e-6)  # 5 signals x 20 uJ


def test_esp32_model_is_time_based() -> None:
    awake = Esp32("awake")
    assert awake.e0 == pytest.approx(2000 * 3.6 * 3.3)  # 23,760 J
    assert awake.tx(K, np.array([1.0, 90.0])).tolist() == pytest.approx([3.3 * 0.24 * 0.004] * 2)
    assert awake.rx(K) == pytest.approx(3.3 * 0.1 * 0.004)
    alive = np.array([True, True, False])
    heads = np.array([True, False, False])
    assert awake.idle(alive, heads).tolist() == pytest.approx([3.3 * 0.04 * 60] * 2 + [0])
    sleepy = Esp32("sleepy", battery_mah=20)
    member = 3.3 * (10e-6 * 59.7 + 0.1 * 0.3)
    assert sleepy.idle(alive, heads).tolist() == pytest.approx([3.3 * 0.04 * 60, member, 0])
    with pytest.raises(ValueError, match="awake"):
        Esp32("hibernating")


# ---- the literature's rules -------------------------------------------------------------


def test_leach_threshold() -> None:
    p = np.full(3, 0.1)
    epoch = np.full(3, 10)
    eligible = np.array([True, True, False])
    assert leach_threshold(p, 0, epoch, eligible).tolist() == pytest.approx([0.1, 0.1, 0])
    assert leach_threshold(p, 5, epoch, eligible)[0] == pytest.approx(0.1 / (1 - 0.5))
    assert leach_threshold(p, 9, epoch, eligible)[0] == pytest.approx(1.0)
    assert leach_threshold(p, 10, epoch, eligible)[0] == pytest.approx(0.1)  # a new epoch


def test_leach_epoch_every_node_leads_once_per_epoch() -> None:
    field = Field(50, seed=3, e0=0.5)
    scheme = leach(field, scheme_rng(3), 0.1)
    alive = np.ones(50, dtype=bool)
    for epoch in range(3):
        led = np.zeros(50, dtype=int)
        for r in range(10 * epoch, 10 * epoch + 10):
            heads, target = scheme.plan(r, alive, field.initial)
            led += heads
            assert (target[heads] == SINK).all()
            members = ~heads & (target != SINK)
            assert heads[target[members]].all()  # members send to a head of this round
        assert led.tolist() == [1] * 50  # T(n) reaches 1 in the epoch's last round


def test_sep_probabilities_and_epochs() -> None:
    normal, advanced = sep_probabilities(0.1, 0.1, 1.0)
    assert normal == pytest.approx(0.1 / 1.1)
    assert advanced == pytest.approx(0.2 / 1.1)
    assert 0.9 * normal + 0.1 * advanced == pytest.approx(0.1)  # p heads per round on average
    assert epoch_rounds(normal) == 11
    assert epoch_rounds(advanced) == 6  # 1/p = 5.5, rounded as the paper's code does
    assert epoch_rounds(0.1) == 10
    field = Field(100, seed=1, e0=0.5, advanced=0.1, alpha=1.0)
    assert field.advanced.sum() == 10
    assert field.initial[field.advanced].tolist() == [1.0] * 10
    scheme = sep(field, scheme_rng(1), 0.1, 1.0)
    assert scheme.p[field.advanced] == pytest.approx(advanced)
    assert scheme.p[~field.advanced] == pytest.approx(normal)


def test_sep_is_leach_on_a_homogeneous_field() -> None:
    field = Field(60, seed=4, e0=0.5)
    model = FirstOrderRadio()
    a = play(field, model, leach(field, scheme_rng(4), 0.1), 5000)
    b = play(field, model, sep(field, scheme_rng(4), 0.1, 1.0), 5000)
    assert a.alive.tolist() == b.alive.tolist()


def test_heed_probability_and_clusters() -> None:
    energy = np.array([0.5, 0.25, 0.0])
    assert heed_probability(0.1, energy, 0.5).tolist() == pytest.approx([0.1, 0.05, 1e-4])
    field = Field(100, seed=2, e0=0.5)
    scheme = Heed(field, scheme_rng(2), 0.1, cluster_range=25.0)
    alive = np.ones(100, dtype=bool)
    alive[:10] = False
    heads, target = scheme.plan(0, alive, field.initial)
    assert heads.any() and not heads[~alive].any()
    members = alive & ~heads & (target != SINK)
    assert heads[target[members]].all()
    assert (field.dist[np.flatnonzero(members), target[members]] <= 25.0).all()


# ---- runs --------------------------------------------------------------------------------


def test_runs_are_deterministic_per_seed() -> None:
    options = Options(nodes=40, seeds=(7, 8))
    setup = make_setup("leach", options)
    both = simulate(setup, options)
    again = simulate(setup, Options(nodes=40, seeds=(8,)))
    for mine, alone in zip(both.summaries, again.summaries, strict=True):
        assert mine.runs[1].alive.tolist() == alone.runs[0].alive.tolist()
        assert mine.runs[1].readings == alone.runs[0].readings
    # and a different seed is a different field
    leach_runs = both.summaries[list(SCHEMES).index("leach")].runs
    assert leach_runs[0].alive.tolist() != leach_runs[1].alive.tolist()


def test_lifetimes_and_deliveries_add_up() -> None:
    options = Options(nodes=30, seeds=(1,), schemes=("direct", "meshelect"))
    result = simulate(make_setup("leach", options), options)
    for summary in result.summaries:
        (run,) = summary.runs
        fnd, hnd, lnd = run.lifetimes(30)
        assert fnd is not None and hnd is not None and lnd is not None
        assert fnd <= hnd <= lnd == len(run.alive)
        # every live node's reading of every round reaches the sink
        assert run.readings == 30 + int(run.alive[:-1].sum())
    direct = result.summaries[0].runs[0]
    assert direct.packets == direct.readings  # no aggregation


def test_command_writes_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    args = ["simulate", "--seeds", "2", "--nodes", "30", "--setups", "leach,esp32-sleepy"]
    assert meshelect([*args, "--out", str(out), "--max-rounds", "3000"]) == 0
    printed = capsys.readouterr()
    assert "leach: seed 2 of 2 done" in printed.err  # progress on stderr
    table = (out / "results.md").read_text()
    assert printed.out.strip() in table  # the table is printed too
    for setup in ("leach", "esp32-sleepy"):
        for plot in ("alive", "deaths"):
            png = (out / ("%s-%s.png" % (plot, setup))).read_bytes()
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
            root = ET.parse(out / ("%s-%s.svg" % (plot, setup))).getroot()
            assert root.tag == "{http://www.w3.org/2000/svg}svg"
    names = ["direct", "static aggregator", "LEACH", "HEED", "SEP", "meshelect"]
    names.append("meshelect, no hysteresis")
    for name in names:
        assert "| %s |" % name in table
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["scheme"] for r in rows] == names * 2
    assert all(not math.isnan(float(r["hnd_mean"])) for r in rows)


def test_command_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert meshelect(["simulate", "--meshes", "3"]) == 2
    assert "square number" in capsys.readouterr().err
    assert meshelect(["simulate", "--setups", "leach,moon"]) == 2
    assert "unknown setup 'moon'" in capsys.readouterr().err
