"""The dashboard in a real headless Chromium: it shows the leader, then the new leader live."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.gateway import BatchSender, GatewayProcess, make_batch
from testkit.tools import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

NODES = ["pi-1", "pi-2", "pi-3", "esp-4", "esp-5"]


@contextlib.contextmanager
def dashboard(
    url: str, height: int = 1100, chromium: str = CHROMIUM
) -> Iterator[tuple[Any, list[str]]]:
    """The dashboard at ``url`` in headless Chromium: (page, page errors seen so far).
    ``chromium``: the program to start (a wrapper that runs it in a lab's namespace)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": 1500, "height": height})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            yield page, errors
        finally:
            browser.close()


BASE_MS = int(time.time() * 1000) - 60_000


class Mesh:
    """A leader's view of a small greenhouse mesh, sending real frames to the gateway."""

    def __init__(self, gw: GatewayProcess, name: str) -> None:
        self.gw = gw
        self.name = name
        self.seq = 0
        self.batch_id = 0
        self.senders: dict[str, BatchSender] = {}
        self.battery = {node: 950 - 120 * i for i, node in enumerate(NODES)}

    def members(self, leader: str, gone: set[str]) -> list[list[Any]]:
        rows = []
        for i, node in enumerate(NODES):
            if node in gone:
                continue
            flags = 1 if node == leader else 0
            score = self.battery[node] + 40 * (len(NODES) - i)
            rows.append([node, score, self.battery[node], 980 - 60 * i, flags, 100 * i])
        return rows

    def send(self, leader: str, term: int, gone: set[str] = frozenset(), **extra: Any) -> None:
        sender = self.senders.get(leader)
        if sender is None:
            sender = self.senders[leader] = BatchSender(self.name, leader, self.gw.udp)
        rows = []
        for _ in range(4):
            self.seq += 1
            t = BASE_MS + 2000 * self.seq
            for i, node in enumerate(NODES):
                if node in gone:
                    continue
                temp = 21_000 + 800 * i + (self.seq * 137 + i * 71) % 900
                hum = 55_000 - 2_000 * i + (self.seq * 211) % 3_000
                rows.append([node, 1, self.seq, t, {"temp_c": temp, "humidity_pct": hum}])
        self.batch_id += 1
        batch = make_batch(
            self.batch_id, self.name, leader, rows, members=self.members(leader, gone), **extra
        )
        ack = sender.deliver(term, batch)
        assert ack[1] == 0, ack


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(str(tmp_path / "gw.db"))
    try:
        yield gw.start()
    finally:
        gw.stop()


def test_dashboard_shows_leader_and_follows_a_new_one(
    gateway: GatewayProcess, artifacts_dir: Path
) -> None:
    from playwright.sync_api import expect

    greenhouse = Mesh(gateway, "greenhouse")
    for _ in range(6):
        greenhouse.send("pi-1", 3, elections=[[3, "pi-1", "start"]])
    barn = Mesh(gateway, "barn")
    barn.send("pi-2", 1)

    with dashboard(gateway.url, height=1250) as (page, errors):
        mesh = page.locator('section.mesh[data-mesh="greenhouse"]')
        expect(mesh.get_by_test_id("leader")).to_have_text("pi-1")
        expect(page.get_by_test_id("feed")).to_have_text("live")
        expect(mesh.locator("svg.graph g.node-leader")).to_have_attribute("data-node", "pi-1")

        # The leader crashes: pi-2 takes over in a new term, pi-1 is gone from the view.
        for _ in range(3):
            greenhouse.send("pi-2", 4, gone={"pi-1"})
        expect(mesh.get_by_test_id("leader")).to_have_text("pi-2")
        expect(mesh.locator(".term-value")).to_have_text("4")
        expect(mesh.locator("svg.graph g.node-leader")).to_have_attribute("data-node", "pi-2")
        expect(mesh.locator("ol.timeline li").first).to_contain_text("pi-2")
        expect(mesh.locator("ol.timeline li").first).to_contain_text("crash")
        # Plotly drew the charts (served from the installed package, no network).
        expect(mesh.locator(".readings-chart .main-svg").first).to_be_visible()
        expect(mesh.locator(".agg-chart .main-svg").first).to_be_visible()
        # An alert arrives live too.
        greenhouse.send("pi-2", 4, gone={"pi-1"}, dropped=[["esp-5", 12]])
        expect(mesh.locator('ul.alerts li[data-kind="readings_dropped"]')).to_be_visible()
        page.wait_for_timeout(600)  # let the throttled chart redraw settle for the picture
        page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
        assert errors == []


AGENT_CONFIG = """
node_id = "{node}"
mesh = "live"
state_dir = "{state}"
log_level = "warning"
[udp]
interface = "127.0.0.1"
unicast_port = 0
port = {port}
group = "239.255.92.1"
[gateway]
address = "127.0.0.1:{gateway_port}"
[discovery]
enabled = false
[data]
sample_ms = 500
[[sensors]]
type = "simulated"
seed = {seed}
battery_start = {battery}
[sensors.metrics.temp_c]
base = 21000
amplitude = 2000
period_ms = 20000
"""


@pytest.mark.slow
def test_dashboard_follows_real_agents_when_the_leader_is_killed(
    gateway: GatewayProcess, tmp_path: Path, artifacts_dir: Path
) -> None:
    """Three real agent processes (UDP multicast on loopback) feed the gateway; the leader is
    SIGKILLed and the page shows its successor without a reload."""
    import socket
    import subprocess
    import sys

    from playwright.sync_api import expect, sync_playwright

    from tests.paths import REPO_ROOT

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        mesh_port = probe.getsockname()[1]
    agents: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i, node in enumerate(["pi-1", "pi-2", "pi-3"]):
            path = tmp_path / ("%s.toml" % node)
            path.write_text(
                AGENT_CONFIG.format(
                    node=node, state=tmp_path / node, port=mesh_port,
                    gateway_port=gateway.udp[1], seed=i + 1, battery=950 - 100 * i,
                )
            )  # fmt: skip
            agents[node] = subprocess.Popen(
                [sys.executable, "-m", "agent", "agent", "--config", str(path)],
                cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                page.goto(gateway.url + "/")
                mesh = page.locator('section.mesh[data-mesh="live"]')
                # pi-1 has the best battery: it leads once the mesh has settled.
                expect(mesh.get_by_test_id("leader")).to_have_text("pi-1", timeout=20_000)
                agents["pi-1"].kill()
                agents["pi-1"].wait(5)
                expect(mesh.get_by_test_id("leader")).to_have_text("pi-2", timeout=20_000)
                expect(mesh.locator("ol.timeline li").first).to_contain_text("pi-2")
                page.wait_for_timeout(1500)
                page.screenshot(
                    path=str(artifacts_dir / "dashboard-real-agents.png"), full_page=True
                )
            finally:
                browser.close()
    finally:
        for process in agents.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)


def _launch(p: Any) -> Any:
    return p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))


def test_the_snapshot_draws_everything_at_once(gateway: GatewayProcess) -> None:
    """The first event carries the recent readings: the charts need no second request, the
    counter is right at once, and without plotly.js the page still shows the mesh and says
    why the charts are missing."""
    from playwright.sync_api import expect, sync_playwright

    greenhouse = Mesh(gateway, "greenhouse")
    for _ in range(3):
        greenhouse.send("pi-1", 3, elections=[[3, "pi-1", "start"]])
    sent = 3 * 4 * len(NODES)
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            asked: list[str] = []
            page.on("request", lambda request: asked.append(request.url))
            page.goto(gateway.url + "/")
            mesh = page.locator('section.mesh[data-mesh="greenhouse"]')
            expect(mesh.locator(".readings-chart .main-svg").first).to_be_visible()
            expect(mesh.locator(".agg-chart .main-svg").first).to_be_visible()
            expect(page.locator("#stat-readings")).to_have_text(str(sent))
            assert not [url for url in asked if "/api/meshes" in url], asked

            blocked = browser.new_page(viewport={"width": 1500, "height": 1100})
            blocked.route("**/vendor/plotly.min.js", lambda route: route.abort())
            blocked.goto(gateway.url + "/")
            mesh = blocked.locator('section.mesh[data-mesh="greenhouse"]')
            expect(mesh.get_by_test_id("leader")).to_have_text("pi-1")
            expect(blocked.locator("#stat-readings")).to_have_text(str(sent))
            expect(mesh.locator(".readings-chart .note")).to_have_text(
                "plotly.js not available (pip install plotly)"
            )
        finally:
            browser.close()


EVIL_NODE = "<a href=x>n</a>"  # 15 bytes: a valid node id
EVIL_METRIC = "<b>x</b>"


def test_names_are_text_units_are_one_and_the_leader_is_explained(
    gateway: GatewayProcess, artifacts_dir: Path
) -> None:
    """Plotly reads HTML in the text it draws: a node named like a link and a metric named like
    bold text show as they are. Battery is percent on the chart as in the table. The page says
    why the leader leads although another node scores more."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1250})
            page.goto(gateway.url + "/")
            expect(page.get_by_test_id("feed")).to_have_text("live")
            # Sent once the page is open, so that pi-2 counts as heard lately (5 s).
            sender = BatchSender("names", EVIL_NODE, gateway.udp)
            rows = [
                [
                    EVIL_NODE,
                    1,
                    seq,
                    BASE_MS + 1000 * seq,
                    {EVIL_METRIC: 5000, "battery": 870, "temp_c": 21500},
                ]
                for seq in range(1, 6)
            ]
            members = [[EVIL_NODE, 751, 870, 900, 1, 0], ["pi-2", 769, 900, 910, 0, 50]]
            batch = make_batch(
                1, "names", EVIL_NODE, rows, members=members, elections=[[2, EVIL_NODE, "start"]]
            )
            assert sender.deliver(2, batch)[1] == 0
            mesh = page.locator('section.mesh[data-mesh="names"]')
            expect(mesh.get_by_test_id("leader")).to_have_text(EVIL_NODE)
            chart = mesh.locator(".readings-chart")
            expect(chart.locator(".main-svg").first).to_be_visible()
            expect(mesh.locator(".leader-chart .main-svg").first).to_be_visible()
            # Every name drawn by plotly is text: no link, no bold, the markup spelled out.
            assert mesh.locator(".chart svg a").count() == 0
            assert mesh.locator('.chart svg tspan[style*="bold"]').count() == 0
            expect(chart.locator(".legendtext").first).to_have_text(EVIL_NODE)
            titles = chart.locator('text[class^="y"][class$="title"]').all_text_contents()
            assert sorted(titles) == sorted([EVIL_METRIC, "battery (%)", "temp_c (°C)"]), titles
            ticks = mesh.locator(".leader-chart .ytick text").all_text_contents()
            assert ticks == [EVIL_NODE], ticks
            # Battery: percent on the chart (870 per mille is 87 %) as in the table.
            shown = page.evaluate(
                """() => {
                    const gd = document.querySelector('section.mesh[data-mesh="names"] .readings-chart');
                    const titles = Object.keys(gd.layout).filter((k) => k.startsWith("yaxis"))
                        .map((k) => [k.replace("axis", ""), gd.layout[k].title.text]);
                    const axis = titles.find(([, t]) => t === "battery (%)")[0];
                    return gd.data.filter((t) => t.yaxis === axis).flatMap((t) => t.y);
                }"""
            )
            assert shown and all(value == 87 for value in shown), shown
            expect(mesh.locator("table.nodes tbody tr").first).to_contain_text("87.0%")
            expect(mesh.get_by_test_id("leader-why")).to_have_text(
                "pi-2 scores 769, 18 more than %s (751), but not more than 150 more: "
                "the incumbent keeps leading." % EVIL_NODE
            )
            page.screenshot(path=str(artifacts_dir / "dashboard-names.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.slow
def test_the_demo_dashboard_kill_button_gives_a_new_leader_live(artifacts_dir: Path) -> None:
    """`meshelect demo` in Chromium: the page at load, then the kill-the-leader button; the new
    leader, the operator's action and the election's reason appear without a reload."""
    from playwright.sync_api import expect, sync_playwright

    from testkit.demo import DemoRun

    demo = DemoRun("browser-demo", "--agents", "4")
    try:
        with sync_playwright() as p:
            browser = _launch(p)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                loads: list[str] = []
                page.on("load", lambda: loads.append(page.url))
                page.goto(demo.url)
                mesh = page.locator('section.mesh[data-mesh="browser-demo"]')
                expect(mesh.get_by_test_id("leader")).to_have_text("node-1", timeout=30_000)
                expect(mesh.locator("table.nodes tbody tr")).to_have_count(4, timeout=20_000)
                expect(mesh.locator(".readings-chart .main-svg").first).to_be_visible()
                expect(page.get_by_test_id("demo-heal")).to_be_disabled()
                page.wait_for_timeout(1500)  # a few more points on the charts for the picture
                page.screenshot(path=str(artifacts_dir / "demo-at-load.png"), full_page=True)

                # The mesh must hear all four before the button: node-1 leads by then.
                page.get_by_test_id("demo-kill").click()
                expect(page.get_by_test_id("demo-status")).to_contain_text("kill -9 node-1")
                expect(mesh.get_by_test_id("leader")).not_to_have_text("node-1", timeout=20_000)
                timeline = mesh.locator("ol.timeline")
                expect(timeline.locator('li.operator-entry[data-action="kill"]')).to_contain_text(
                    "kill -9 node-1 (the leader"
                )
                expect(timeline.locator("li").first).to_contain_text("crash", timeout=20_000)
                page.wait_for_timeout(1500)
                page.screenshot(path=str(artifacts_dir / "demo-after-failover.png"), full_page=True)
                assert loads == [demo.url], "the page was reloaded"
            finally:
                browser.close()
        assert demo.end() == 0, demo.output()
    finally:
        demo.cleanup()


# A board's report of where its update stands, sent by the board's own code (firmware/app/ota.py
# ``report``: the GET a board sends at every step) on the MicroPython unix port, one process a
# board.
REPORT = r"""
import asyncio, json, sys
from app import ota

class Board:
    pass

board = Board()
board.ota = json.loads(sys.argv[1])
board.cfg = {"node_id": board.ota.pop("node")}
asyncio.run(ota.report(board))
"""


def report(gateway: GatewayProcess, script: Path, *reports: dict[str, Any]) -> None:
    """Each of ``reports`` (a board's ``ota`` state and its ``node``) to the gateway's bundle
    ``v2``, as the board reports it."""
    from testkit.mpy import run_micropython
    from tests.paths import REPO_ROOT

    if not script.exists():
        script.write_text(REPORT)
    firmware = REPO_ROOT / "firmware"
    for fields in reports:
        state = json.dumps(dict(fields, url=gateway.url + "/ota/v2/"))
        rc, out = run_micropython(script, state, path=[firmware, firmware / "lib"])
        assert rc == 0 and not out, out


@pytest.mark.micropython
def test_the_update_card_shows_each_board_and_follows_its_update_live(
    tmp_path: Path, artifacts_dir: Path
) -> None:
    """The gateway serves bundles (``--ota-dir``) and boards report to it: the card appears
    with the first report, shows each board's app version and update state, and follows
    each new report without a reload."""
    from playwright.sync_api import expect

    (tmp_path / "bundles").mkdir()
    gw = GatewayProcess(str(tmp_path / "gw.db"), "--ota-dir", str(tmp_path / "bundles"))
    script = tmp_path / "report.py"
    gw.start()
    try:
        with dashboard(gw.url) as (page, errors):
            card = page.get_by_test_id("ota")
            expect(page.get_by_test_id("feed")).to_have_text("live")
            expect(card).to_be_hidden()  # no board reported yet

            def row(node: str) -> Any:
                return card.locator('tr[data-node="%s"] td' % node)

            old = {"version": "v1", "new": "v2"}
            report(
                gw,
                script,
                {"node": "fw-1", "state": "idle", "pct": 100, "version": "v2"},
                {"node": "fw-2", "state": "downloading", "pct": 50, **old},
                {"node": "fw-3", "state": "rolled-back", "reason": "no join", **old},
                {"node": "fw-4", "state": "failed", "reason": "signature", **old},
                {"node": "fw-5", "state": "trial", "pct": 100, **old},
            )
            expect(card).to_be_visible(timeout=10_000)
            expect(card.locator("tbody tr")).to_have_count(5)
            expect(row("fw-1")).to_have_text(["fw-1", "v2", "idle"])
            expect(row("fw-2")).to_have_text(["fw-2", "v1", "downloading 50% of v2"])
            expect(row("fw-3")).to_have_text(["fw-3", "v1", "rolled back from v2: no join"])
            expect(row("fw-4")).to_have_text(["fw-4", "v1", "failed: signature"])
            expect(row("fw-5")).to_have_text(["fw-5", "v1", "trial of v2"])
            page.screenshot(path=str(artifacts_dir / "dashboard-ota.png"))

            # Live: fw-2 goes on, fw-5 commits, a board that never reported appears.
            report(gw, script, {"node": "fw-2", "state": "downloading", "pct": 75, **old})
            expect(row("fw-2")).to_have_text(["fw-2", "v1", "downloading 75% of v2"])
            report(
                gw,
                script,
                {"node": "fw-2", "state": "pending", "pct": 100, **old},
                {"node": "fw-5", "state": "idle", "pct": 100, "version": "v2"},
                {"node": "fw-6", "state": "verifying", "pct": 100, **old},
            )
            expect(row("fw-2")).to_have_text(["fw-2", "v1", "pending reboot into v2"])
            expect(row("fw-5")).to_have_text(["fw-5", "v2", "idle"])
            expect(row("fw-6")).to_have_text(["fw-6", "v1", "verifying"])
            expect(card.locator("tbody tr")).to_have_count(6)
            assert errors == []
    finally:
        gw.stop()


# A sleepy member and the energy column, from real Pi agents in namespaces and the real
# gateway; Chromium runs in the gateway's namespace (the lab has no route out of it).
SLEEPY_MESH = "sleepy-dash"
SLEEP_MS = 8000  # above the page's "heard lately" (5 s): only then is a member "sleeping"
PAGE_SILENT_MS = 15_000  # the page's SILENT_MS, and the gateway's default --silent-after
ENERGY = "[energy]\nreport_ms = 1000\n"
SLEEP = "[sleep]\ninterval_ms = %d\nlisten_ms = 2000\nconfirm_ms = 3000\n" % SLEEP_MS
ROLE_MA = r"(?:leader|member|sleepy) \d+\.\d\d"
# The energy cell: overall mA and projected life, then mA per role.
ENERGY_TEXT = re.compile(r"(\d+\.\d\d) mA, (\d+\.\d) (h|d)\n(%s(?:, %s)*)" % (ROLE_MA, ROLE_MA))

FETCH = "(url) => fetch(url).then((r) => r.text())"  # a GET from the page, as its own requests

# Each time the page redraws the sleepy node's row: what the row says, the page's clock, and
# the member row the page drew it from (a MutationObserver, called once per redraw).
WATCH_ROW = """([mesh, node]) => {
    window.rowLog = [];
    const body = document.querySelector('section.mesh[data-mesh="' + mesh + '"] table.nodes tbody');
    new MutationObserver(() => {
        const tr = [...body.children].find((r) => r.firstChild.textContent === node);
        const m = state.meshes.get(mesh).mesh.members.find((x) => x.node === node);
        if (!tr || !m) return;
        window.rowLog.push({
            role: tr.children[1].textContent, silent: tr.classList.contains("is-silent"),
            now: now(), last_seen_ms: m.last_seen_ms, next_wake_ms: m.next_wake_ms,
            sleep_ms: m.sleep_ms,
        });
    }).observe(body, { childList: true });
}"""

# The page's energy column: n3's current as a sleepy member below half n2's as a member.
SLEEPING_SAVES = """(mesh) => {
    const rows = [...document.querySelectorAll('section.mesh[data-mesh="' + mesh + '"] table.nodes tbody tr')];
    const share = (node, role) => {
        const tr = rows.find((r) => r.firstChild.textContent === node);
        const roles = tr && tr.querySelector(".energy-roles");
        const found = roles && roles.textContent.match(new RegExp(role + " ([0-9.]+)"));
        return found ? parseFloat(found[1]) : null;
    };
    const sleepy = share("n3", "sleepy"), member = share("n2", "member");
    return sleepy !== null && member !== null && sleepy < member / 2;
}"""


def energy_figures(text: str) -> tuple[float, dict[str, float], float]:
    """(mA overall, mA per role, projected life in hours) from an energy cell's text."""
    found = ENERGY_TEXT.fullmatch(text)
    assert found, text
    roles = {}
    for part in found.group(4).split(", "):
        role, ma = part.split(" ")
        roles[role] = float(ma)
    life = float(found.group(2)) * (24 if found.group(3) == "d" else 1)
    return float(found.group(1)), roles, life


@pytest.mark.netns
@pytest.mark.slow
def test_dashboard_shows_a_sleepy_member_and_energy_from_real_agents(
    tmp_path: Path, artifacts_dir: Path
) -> None:
    """Three Pi agents with energy reports, the third sleepy (8 s wake interval). The page shows
    it "sleeping, wakes in N s" while it dozes, N as the API's next_wake_ms says; the energy
    column shows each node's current per role and its battery's projected life, the leader's
    with its "leader" share, dearer than following. Killed while it dozes, the sleepy node
    shows its wake overdue, and turns silent only once it missed its wakes (two intervals
    and the silent time), when the gateway's node_silent alert says so too."""
    from playwright.sync_api import expect

    from testkit.meshlab import MeshUnderTest

    mesh = MeshUnderTest(
        3, "udp", mesh=SLEEPY_MESH, prefix="sd-", subnet="10.88.0.0/24", sample_ms=1000
    )
    try:
        mesh.open()
        assert mesh.gateway is not None
        for host, battery in ((1, 950), (2, 800)):
            mesh.start_agent(host, battery, extra=ENERGY)
        assert mesh.wait_for(lambda: mesh.agreed_leader([1, 2]) == "n1", 30)
        mesh.start_agent(3, 1000, extra=ENERGY + SLEEP)  # the best battery, but sleepy
        chromium = mesh.lab.wrapper(mesh.gw_host, CHROMIUM, str(tmp_path / "chromium"))
        with dashboard(mesh.gateway.url, height=1250, chromium=chromium) as (page, errors):
            section = page.locator('section.mesh[data-mesh="%s"]' % SLEEPY_MESH)
            expect(section.get_by_test_id("leader")).to_have_text("n1", timeout=20_000)
            page.evaluate(WATCH_ROW, [SLEEPY_MESH, "n3"])

            def row(node: str) -> Any:
                return section.locator("table.nodes tbody tr").filter(
                    has=page.locator("td:first-child", has_text=re.compile("^%s$" % node))
                )

            # Dozing: "sleeping, wakes in N s", N from the member row's next wake. The API is
            # read once the page shows it sleeping; if the node woke meanwhile, the next doze.
            role = row("n3").locator("td").nth(1)
            for _ in range(3):
                expect(role).to_have_text(re.compile(r"sleeping, wakes in \d+ s"), timeout=60_000)
                api = json.loads(page.evaluate(FETCH, "/api/meshes/" + SLEEPY_MESH))
                n3 = next(m for m in api["members"] if m["node"] == "n3")
                assert n3["sleep_ms"] == SLEEP_MS, n3
                assert n3["next_wake_ms"] == n3["last_seen_ms"] + SLEEP_MS, n3
                # The gateway's next wake moves by a ms or two from batch to batch (each
                # reports the member's age): a doze's redraws are those within a second of it.
                this_doze = [
                    r
                    for r in page.evaluate("window.rowLog")
                    if r["role"].startswith("sleeping, wakes")
                    and abs(r["next_wake_ms"] - n3["next_wake_ms"]) < 1000
                ]
                if this_doze:
                    break
                expect(role).to_have_text("sleepy, awake", timeout=30_000)  # it woke: next doze
            assert this_doze, (page.evaluate("window.rowLog"), n3)
            for r in this_doze:
                n = int(r["role"].split()[-2])
                assert abs(r["next_wake_ms"] - n3["next_wake_ms"]) <= 50, (r, n3)
                # The page's clock a moment after the redraw (same task): up to N s ahead.
                ahead = n3["next_wake_ms"] - r["now"]
                assert (n - 1) * 1000 - 300 < ahead <= n * 1000 + 50, (r, n3)
                assert 1 <= n <= SLEEP_MS // 1000, (r, n3)

            # Its first reports cover mostly its wakes; a few dozes on, sleeping shows.
            page.wait_for_function(SLEEPING_SAVES, arg=SLEEPY_MESH, timeout=60_000)
            cells = {}
            for node in ("n1", "n2", "n3"):
                cell = row(node).locator("td").last
                expect(cell).to_have_text(ENERGY_TEXT, use_inner_text=True, timeout=20_000)
                cells[node] = energy_figures(cell.inner_text())
            expect(row("n1").locator("td").nth(1)).to_have_text("leader")
            expect(row("n1").locator(".energy-roles")).to_contain_text("leader ")
            expect(row("n3").locator(".energy-roles")).to_have_text(re.compile(r"^sleepy "))
            leader_ma, member_ma = cells["n1"][1]["leader"], cells["n2"][1]["member"]
            sleepy_ma = cells["n3"][1]["sleepy"]
            for node, (ma, roles, life) in sorted(cells.items()):
                print("page energy %s: %.2f mA %s, life %.1f h" % (node, ma, roles, life))
            assert leader_ma > member_ma > sleepy_ma, cells
            for node, (ma, roles, life) in cells.items():
                assert min(roles.values()) - 0.005 <= ma <= max(roles.values()) + 0.005, (
                    node,
                    cells,
                )
                # Life: battery x capacity / current, as the API's figures give it.
                member = next(m for m in api["members"] if m["node"] == node)
                hours = member["battery"] / 1000 * member["energy"]["capacity_mah"] / ma
                assert abs(life - hours) <= 0.1 * hours + 0.1, (node, life, hours, member)
            # The energy reports are readings too: the charts draw the sensors' metrics only.
            for chart in (".readings-chart", ".agg-chart"):
                expect(section.locator(chart + " .main-svg").first).to_be_visible()
                titles = section.locator(chart + ' text[class^="y"][class$="title"]')
                assert sorted(titles.all_text_contents()) == ["battery (%)", "temp (°C)"], chart
            page.screenshot(path=str(artifacts_dir / "dashboard-sleepy.png"), full_page=True)

            # Killed while it dozes (a flat battery, not a goodbye): it misses its wakes.
            expect(role).to_have_text(re.compile(r"sleeping, wakes in \d+ s"), timeout=30_000)
            mesh.kill(3)
            expect(row("n3")).to_have_class(re.compile(r"\bis-silent\b"), timeout=60_000)
            expect(role).to_have_text("sleeping, wake overdue")
            expect(section.locator("svg.graph g.node[data-node=n3] circle")).to_have_attribute(
                "fill", "var(--silent)"
            )
            alert = section.locator('ul.alerts li[data-kind="node_silent"]')
            expect(alert).to_contain_text("n3 silent", timeout=20_000)
            expect(alert).to_contain_text("missed its wakes")
            log = page.evaluate("window.rowLog")
            (artifacts_dir / "sleepy-rowlog.json").write_text(json.dumps(log))
            first = next(i for i, r in enumerate(log) if r["silent"])
            last_seen = log[first]["last_seen_ms"]
            # Not silent while asleep: every redraw before is not; the first silent one came
            # after two missed wakes and the silent time; before it, the wake was overdue.
            assert not any(r["silent"] for r in log[:first]), log
            assert log[first]["now"] - last_seen > 2 * SLEEP_MS + PAGE_SILENT_MS, log[first]
            overdue = [r for r in log[:first] if r["role"] == "sleeping, wake overdue"]
            missed = [r for r in overdue if abs(r["last_seen_ms"] - last_seen) < 1000]
            assert missed, log
            print(
                "n3 unheard for %.1f s when first shown overdue, %.1f s when first shown silent;"
                " overdue before the kill: %d redraws"
                % (
                    (missed[0]["now"] - last_seen) / 1000,
                    (log[first]["now"] - last_seen) / 1000,
                    len(overdue) - len(missed),
                )
            )
            page.screenshot(path=str(artifacts_dir / "dashboard-sleepy-silent.png"), full_page=True)
            assert errors == []
    finally:
        mesh.close()
        mesh.cleanup()
