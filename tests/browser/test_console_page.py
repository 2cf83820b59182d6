"""The console in a real browser (Debian's chromium, headless, via Playwright) against a live demo:
the page loads, shows the inventory, its charts move, a power slider caps a device and the
chart shows its power fall, accepting a recommendation changes the score."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS, LiveConsole, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def state(page: Any, expr: str) -> Any:
    return page.evaluate(f"() => {{ const S = window.consoleState; return {expr}; }}")


def test_page_shows_the_inventory_and_live_charts(live_console: LiveConsole, page: Any) -> None:
    page.goto(live_console.url)
    rows = page.locator("#inventory tbody tr")
    wait_for(lambda: rows.count() == 36, what="36 inventory rows")
    assert page.locator("#inventory").get_by_text("H100-SXM").first.is_visible()
    assert page.locator("#inventory").get_by_text("EPYC-9654").first.is_visible()
    assert "36 accelerators on 4 hosts" in page.locator("#inv-count").inner_text()
    wait_for(lambda: state(page, "S.history && S.history.ts_ns.length") > 5, what="history")
    first = state(page, "S.history.ts_ns[S.history.ts_ns.length - 1]")
    polls = state(page, "S.polls")
    wait_for(
        lambda: state(page, "S.history.ts_ns[S.history.ts_ns.length - 1]") > first,
        what="the device chart to move on",
    )
    assert state(page, "S.polls") > polls
    assert page.locator("#chart-power path.line.p").count() == 1
    assert page.locator("#chart-temp path.line").count() == 1
    # Memory: the simulated backend does not report it, and the chart says so (absent != 0).
    assert "not reported" in page.locator("#chart-mem").text_content()
    wait_for(lambda: page.locator("#host-charts figure").count() == 4, what="host charts")
    # Every host has its four charts: power with caps, temperature, utilization, memory (the
    # simulated backend reports no memory: the chart says so), and they move on with the data.
    hosts = page.locator("#host-charts figure")
    for cls in ("pw", "tp", "ut"):
        wait_for(
            lambda cls=cls: (
                page.locator(f"#host-charts svg.{cls} path.line").count()
                == (8 if cls == "pw" else 4)
            ),
            what=f"host {cls} lines",
        )
    assert page.locator("#host-charts svg.mm path.line").count() == 0
    assert all("memory not reported" in t for t in hosts.locator("svg.mm").all_text_contents())
    assert hosts.locator("svg.ut").first.text_content().endswith("util %")
    util = page.locator('#host-charts figure[data-host="node0"] svg.ut')
    drawn_ts = float(util.get_attribute("data-ts"))
    wait_for(lambda: float(util.get_attribute("data-ts")) > drawn_ts, what="host util to move on")
    # What it drew last is the API's newest host value (the mean over the host's devices).
    drawn, api = page.evaluate(
        """() => [document.querySelector('#host-charts figure[data-host="node0"] svg.ut')
                   .dataset.lastutil,
                  window.consoleState.hosts.node0.util_compute_pct.filter(v => v !== null).pop()]"""
    )
    assert float(drawn) == api and 0 < api <= 100
    # The off-bus GPU (22 s to 67 s) shows as silent while it is, and its alert is in the feed
    # with its reason.
    row6 = page.locator('#inventory tr[data-device="node0/gpu6"]')
    wait_for(
        lambda: (
            ("silent" in row6.inner_text())
            == (not state(page, "S.live.devices['node0/gpu6'].reporting"))
        ),
        what="node0/gpu6's row to match its reporting state",
    )
    wait_for(lambda: "device_silent" in page.locator("#alerts").inner_text(), what="alert")
    assert page.locator("#conn").inner_text() == "live"


def test_inventory_rows_expand_to_every_capability(live_console: LiveConsole, page: Any) -> None:
    page.goto(live_console.url)
    row = page.locator('#inventory tr[data-device="node2/cpu0"]')
    wait_for(lambda: row.count() == 1, what="the inventory")
    wait_for(lambda: state(page, "S.status !== null"), what="status")
    device = next(
        d
        for d in page.request.get(f"{live_console.url}/api/inventory").json()["devices"]
        if d["device_id"] == "node2/cpu0"
    )
    caps = device["capabilities"]
    selected = state(page, "S.selected")
    row.locator("button.more").click()
    details = page.locator('#inventory tr.caps-row[data-caps-of="node2/cpu0"]')
    assert details.is_visible()
    assert state(page, "S.selected") == selected  # expanding is not selecting
    shown = dict(
        zip(
            details.locator("dt").all_inner_texts(),
            details.locator("dd").all_inner_texts(),
            strict=True,
        )
    )
    pl = caps["power_limits"]
    limits = f"{pl['min_w']:g}\u2013{pl['max_w']:g} W, default {pl['default_w']:g} W"
    assert shown["power limits"] == limits
    assert shown["uuid"] == device["uuid"] and shown["backend"] == "sim"
    assert shown["streams"] == ", ".join(device["streams"])
    # Every field discovery has: what the backend cannot tell (None) says so, not a blank.
    fields = {
        "compute capability": caps["compute_capability"],
        "MIG": caps["mig_supported"],
        "ECC": caps["ecc_enabled"],
        "PCIe": caps["pcie_gen"],
        "NVLink links": caps["nvlink_links"],
        "max clocks": caps["max_clock_sm_mhz"],
        "driver": caps["driver_version"],
        "management library": caps["library_version"],
    }
    for label, value in fields.items():
        assert (shown[label] == "not reported") == (value is None), (label, shown[label])
    for key, value in caps["extra"].items():
        assert shown[f"{key} (backend extra)"] == f"{value:g}"
    assert len(shown) == 4 + len(fields) + 1 + len(caps["extra"])
    page.wait_for_timeout(2500)  # polls redraw the rows' live cells, not the details
    assert details.is_visible() and row.locator("button.more").inner_text() == "▾"
    details.scroll_into_view_if_needed()
    page.locator(".inventory").screenshot(path=str(ARTIFACTS / "inventory-capabilities.png"))
    row.locator("button.more").click()
    assert details.count() == 0


def test_power_slider_caps_the_device_and_the_chart_shows_power_fall(
    live_console: LiveConsole, page: Any
) -> None:
    page.goto(live_console.url)
    row = page.locator('#inventory tr[data-device="node0/gpu1"]')
    row.click()
    wait_for(lambda: state(page, "S.history && S.history.device_id") == "node0/gpu1", what="select")
    before = state(page, "Math.max(...S.history.power_w.slice(-5))")
    assert before > 400  # train-llm runs its GPUs hard
    page.locator("#cap-slider").fill("250")
    wait_for(
        lambda: state(page, "S.live.devices['node0/gpu1'].commanded_cap_w") == 250,
        what="the cap to be applied",
    )
    wait_for(
        lambda: (
            state(page, "S.history.cap_w[S.history.cap_w.length - 1]") == 250
            and state(page, "Math.max(...S.history.power_w.slice(-2))") < 250 * 1.08
        ),
        what="the chart's cap and power to fall to 250 W",
    )
    # The chart itself drew it: its last plotted values.
    chart = page.locator("#chart-power")
    assert float(chart.get_attribute("data-lastcap")) == 250.0
    assert float(chart.get_attribute("data-lastpower")) < 250 * 1.08
    assert "operator" in row.inner_text()  # pinned: the optimizer leaves it alone
    wait_for(lambda: "operator:local" in page.locator("#audit").inner_text(), what="audit row")
    assert (
        live_console.demo.fleet.caps_w[live_console.demo.facts.device_ids.index("node0/gpu1")]
        == 250
    )


def test_accepting_recommendations_changes_the_score(live_console: LiveConsole, page: Any) -> None:
    page.goto(live_console.url)
    accept = page.locator("#recs button.accept")
    wait_for(lambda: accept.count() > 0, what="recommendations")
    assert state(page, "S.score.saved_kwh") == 0  # advise mode, nothing applied: the max baseline
    saved_text = page.locator("#s-saved").inner_text()
    # A cap on a healthy, busy GPU (a thermally throttled one already runs at its minimum: capping
    # it saves nothing, and the score says so).
    rec_id = state(
        page,
        "S.recs.recommendations.find(r => r.kind === 'set_power_cap' && "
        "r.device_id !== 'node1/gpu3' && r.expected_savings_w > 50).id",
    )
    page.locator(f'#recs button.accept[data-rec="{rec_id}"]').click()
    wait_for(lambda: "accepted: 1 applied" in page.locator("#toast").inner_text(), what="toast")
    wait_for(lambda: state(page, "S.score.saved_kwh") > 0, what="energy saved vs max")
    wait_for(lambda: page.locator("#s-saved").inner_text() != saved_text, what="score text")
    assert state(page, "S.recs.accepted_total") == 1
    # Accept everything the optimizer proposes (load distribution included) for a while: the
    # SLO holds again, and savings within it earn points and the first badge.
    accept_all = page.locator("#recs-accept-all")
    for _ in range(30):
        if state(page, "S.score.points") > 0:
            break
        if accept_all.is_visible():
            accept_all.click()
        page.wait_for_timeout(500)
    wait_for(lambda: state(page, "S.score.points") > 0, timeout_s=30, what="points")
    wait_for(
        lambda: page.locator('.badge.earned[data-badge="first-wh"]').count() == 1, what="badge"
    )
    assert int(page.locator("#s-points").inner_text()) > 0


def test_fleet_budget_slider_bounds_the_sum_of_caps(live_console: LiveConsole, page: Any) -> None:
    page.goto(live_console.url)
    wait_for(lambda: state(page, "S.status !== null"), what="status")
    page.locator("#budget-slider").fill("15000")
    wait_for(lambda: state(page, "S.status.budget_w") == 15000, what="the budget")
    assert live_console.demo.fleet.caps_w.sum() <= 15000 + 36
    assert page.locator("#h-budget").inner_text() == "15000 W"


def test_an_exposed_console_asks_for_a_token_and_a_viewer_cannot_act(
    exposed_console: LiveConsole, page: Any
) -> None:
    page.goto(exposed_console.url)
    bar = page.locator("#token-bar")
    wait_for(lambda: bar.is_visible(), what="the token prompt")
    assert page.locator("#conn").inner_text() == "token needed"
    assert page.locator("#inventory tbody tr").count() == 0  # nothing without a token
    page.locator("#token-input").fill("view-secret-1")
    page.locator("#token-save").click()
    rows = page.locator("#inventory tbody tr")
    wait_for(lambda: rows.count() == 36, what="the inventory with a viewer token")
    wait_for(lambda: state(page, "S.status && S.status.you.role") == "viewer", what="status")
    demo = exposed_console.demo
    caps = demo.fleet.caps_w.copy()
    page.locator("#cap-slider").fill("300")
    wait_for(
        lambda: "has the viewer role" in page.locator("#toast").inner_text(),
        what="the refusal",
    )
    assert (demo.fleet.caps_w == caps).all() and demo.results == []


@pytest.mark.service
def test_the_read_only_console_over_influxdb(service_settings: Any, page: Any) -> None:
    import time as _time

    from accelpilot.collectors.synthetic import synthetic_samples
    from accelpilot.console.app import create_app
    from accelpilot.console.auth import Auth
    from accelpilot.console.influx_source import InfluxSource
    from accelpilot.console.server import ConsoleServer
    from accelpilot.streams.influx_lines import sample_lines
    from tests.browser.conftest import free_port
    from tests.service.test_console_influx import write

    t0 = (_time.time_ns() - 120 * 10**9) // 10**9 * 10**9
    write(
        service_settings,
        [
            line
            for host in ("h1", "h2")
            for s in synthetic_samples(host, n_devices=4, n_ticks=60, start_ns=t0)
            for line in sample_lines(s, cluster=service_settings.worker.cluster)
        ],
    )
    source = InfluxSource(service_settings.influx.url, service_settings.influx.database)
    server = ConsoleServer(
        create_app(None, source, Auth.for_bind("127.0.0.1", "")), "127.0.0.1", free_port()
    )
    server.start()
    try:
        page.goto(server.url)
        rows = page.locator("#inventory tbody tr")
        wait_for(lambda: rows.count() == 8, what="8 devices from InfluxDB")
        wait_for(lambda: state(page, "S.history && S.history.ts_ns.length") == 60, what="history")
        wait_for(lambda: page.locator("#host-charts figure").count() == 2, what="host charts")
        assert page.locator("#h-tick").inner_text() == "read-only"
        assert not page.locator(".steer").is_visible()  # no steering without the demo
        assert page.locator("#chart-mem path.line").count() == 1  # memory is reported here
        for cls in ("ut", "mm"):  # and the hosts' utilization and memory charts draw it too
            wait_for(
                lambda cls=cls: page.locator(f"#host-charts svg.{cls} path.line").count() == 2,
                what=f"host {cls} lines",
            )
    finally:
        server.stop()


@pytest.mark.service
def test_the_steering_console_over_influxdb_and_kafka(
    service_settings: Any, page: Any, tmp_path: Any
) -> None:
    import time as _time

    from accelpilot.collectors.synthetic import synthetic_samples
    from accelpilot.console.app import create_app
    from accelpilot.console.auth import Auth
    from accelpilot.console.influx_source import InfluxSource
    from accelpilot.console.server import ConsoleServer, pipeline_steering
    from accelpilot.demo import load_demo_scenario
    from accelpilot.signing import generate_keypair
    from accelpilot.streams.influx_lines import sample_lines
    from tests.browser.conftest import free_port
    from tests.service.test_console_influx import write

    t0 = (_time.time_ns() - 120 * 10**9) // 10**9 * 10**9
    write(
        service_settings,
        [
            line
            for s in synthetic_samples("node1", n_devices=8, n_ticks=60, start_ns=t0)
            for line in sample_lines(s, cluster=service_settings.worker.cluster)
        ],
    )
    priv, _ = generate_keypair(tmp_path / "keys", "console")
    steering, publisher = pipeline_steering(service_settings, priv, load_demo_scenario(None))
    source = InfluxSource(service_settings.influx.url, service_settings.influx.database)
    server = ConsoleServer(
        create_app(None, source, Auth.for_bind("127.0.0.1", ""), steering),
        "127.0.0.1",
        free_port(),
    )
    server.start()
    try:
        page.goto(server.url)
        wait_for(lambda: page.locator("#inventory tbody tr").count() == 8, what="node1's devices")
        page.locator('#inventory tr[data-device="node1/gpu3"]').click()
        wait_for(lambda: state(page, "S.selected") == "node1/gpu3", what="select")
        assert page.locator("#h-tick").inner_text() == "steering"
        assert page.locator(".steer").is_visible() and page.locator("#cap-slider").is_visible()
        assert not page.locator(".steer .budget").is_visible()  # the budget is the optimizer's
        assert not page.locator(".score").is_visible() and not page.locator(".recs").is_visible()
        wait_for(lambda: page.locator("#cap-slider").get_attribute("max") == "700", what="limits")
        page.locator("#cap-slider").fill("300")
        wait_for(lambda: "1 published" in page.locator("#toast").inner_text(), what="toast")
        wait_for(lambda: "operator:local" in page.locator("#audit").inner_text(), what="audit")
        assert "pending" in page.locator("#audit").inner_text()  # no agent here to apply it
        [a] = list(steering.published)
        assert (a.device_id, a.cap_w, a.issuer) == ("node1/gpu3", 300.0, "operator:local")
    finally:
        server.stop()
        publisher.close()
