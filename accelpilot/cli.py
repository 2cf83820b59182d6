"""The `accelpilot` command line: every product command."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from accelpilot.config import Settings, load_settings
from accelpilot.errors import AccelpilotError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Watch and steer fleets of AI accelerators.",
)
stack_app = typer.Typer(no_args_is_help=True, help="The local real services: Kafka and InfluxDB.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the effective configuration.")
optimizer_app = typer.Typer(no_args_is_help=True, help="Fleet simulator, baselines and policy.")
dashboards_app = typer.Typer(no_args_is_help=True, help="Grafana dashboards and alert rules.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print JSON figures.")
detect_app = typer.Typer(no_args_is_help=True, help="Run the detectors over files.")
alerts_app = typer.Typer(no_args_is_help=True, help="Alert subscriptions.")
keys_app = typer.Typer(no_args_is_help=True, help="Ed25519 keys that sign actions.")
for sub, name in (
    (stack_app, "stack"),
    (config_app, "config"),
    (optimizer_app, "optimizer"),
    (dashboards_app, "dashboards"),
    (bench_app, "bench"),
    (detect_app, "detect"),
    (alerts_app, "alerts"),
    (keys_app, "keys"),
):
    app.add_typer(sub, name=name)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (default: $ACCELPILOT_CONFIG, then ./accelpilot.toml).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


# -- config ------------------------------------------------------------------------------------
@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective configuration, secrets masked."""
    data = _settings(config).masked()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for section, values in data.items():
        if isinstance(values, dict):
            typer.echo(f"[{section}]")
            for k, v in values.items():
                typer.echo(f"  {k} = {v!r}")
        else:
            typer.echo(f"{section} = {values!r}")


# -- stack -------------------------------------------------------------------------------------
@stack_app.command("up")
def stack_up(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Fetch/build (cached), start Kafka and InfluxDB on 127.0.0.1, create topics and database."""
    from accelpilot.stack.manager import Stack

    stack = Stack(_settings(config))
    progress = (lambda s: print(s, file=sys.stderr)) if as_json else print
    times = stack.up(progress=progress)
    if as_json:
        typer.echo(
            json.dumps(
                {"steps_s": times.steps_s, "total_s": times.total_s, "status": stack.status()},
                indent=2,
            )
        )
    else:
        typer.echo(
            f"stack up in {times.total_s:.1f} s: Kafka {stack.kafka.version} at "
            f"{stack.kafka.bootstrap}, InfluxDB {stack.influx.version} at {stack.influx.url}"
        )


@stack_app.command("down")
def stack_down(
    config: ConfigOpt = None,
    wipe: Annotated[
        bool, typer.Option("--wipe", help="Also delete broker and database state.")
    ] = False,
) -> None:
    """Stop Kafka and InfluxDB (SIGTERM, then SIGKILL after a grace period)."""
    from accelpilot.stack.manager import Stack

    Stack(_settings(config)).down(wipe=wipe)


@stack_app.command("status")
def stack_status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Show whether each service is cached, running and answering."""
    from accelpilot.stack.manager import Stack

    st = Stack(_settings(config)).status()
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    for name, info in st.items():
        state = "ready" if info["ready"] else ("running, not answering" if info["pid"] else "down")
        typer.echo(
            f"{name:9} {info['version']:8} {state}  "
            + "  ".join(f"{k}={v}" for k, v in info.items() if k not in ("version", "ready"))
        )
    if not all(info["ready"] for info in st.values()):
        raise typer.Exit(1)


# -- services ----------------------------------------------------------------------------------
@app.command()
def worker(
    config: ConfigOpt = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
) -> None:
    """Run a stream worker (faust): validate samples, write InfluxDB, dead-letter bad input."""
    from accelpilot.streams.app import run_worker

    run_worker(_settings(config), loglevel=loglevel)


@app.command()
def demo(
    scenario: Annotated[
        Path | None, typer.Option(help="Fleet scenario: a .json file or a bundled name.")
    ] = None,
    duration: Annotated[float, typer.Option(help="Seconds to run (0 = until Ctrl-C).")] = 0,
    port: Annotated[
        int | None, typer.Option(help="Console port (default: console.port, 8000).")
    ] = None,
    headless: Annotated[bool, typer.Option(help="No console, terminal summary only.")] = False,
    speed: Annotated[float, typer.Option(help="Simulated ticks per wall-clock second.")] = 2.0,
    mode: Annotated[
        str, typer.Option(help="auto: the optimizer acts; advise: it recommends in the console.")
    ] = "auto",
    host: Annotated[
        str | None,
        typer.Option(help="Console address (default: console.host, 127.0.0.1; else tokens)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Everything in one process on a simulated fleet, console on http://127.0.0.1:8000."""
    from accelpilot.demo import MODES, run_demo

    if mode not in MODES:
        raise typer.BadParameter(f"choose one of {', '.join(MODES)}", param_hint="--mode")
    c = _settings(config).console
    run_demo(
        scenario,
        duration,
        speed,
        headless,
        port if port is not None else c.port,
        mode=mode,  # type: ignore[arg-type]
        host=host or c.host,
        tokens=c.tokens.get_secret_value(),
    )


@app.command()
def console(
    port: Annotated[
        int | None, typer.Option(help="Console port (default: console.port, 8000).")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Console address (default: console.host, 127.0.0.1; else tokens)."),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="Ed25519 private key (PEM): steer, publishing signed operator actions to "
            "fleet.actions (the agents must trust its .pub). Without it: read-only."
        ),
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option(
            help="With --key: the fleet description (device limits, streams), a scenario "
            ".json or a bundled name, as for `optimizer run`."
        ),
    ] = None,
    hosts: Annotated[
        str | None, typer.Option(help="With --key: comma-separated hosts to steer.")
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Show only this cluster's points (the worker group's worker.cluster); "
            "default: every point of the database."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """The console over the real pipeline's InfluxDB: read-only, or with --key the power-cap
    and load sliders publish signed actions to Kafka's fleet.actions."""
    from accelpilot.console.server import run_pipeline_console
    from accelpilot.demo import load_demo_scenario

    s = _settings(config)
    c = s.console
    run_pipeline_console(
        s,
        host or c.host,
        port if port is not None else c.port,
        key_path=key.expanduser() if key is not None else None,
        scenario=load_demo_scenario(scenario) if scenario is not None else None,
        hosts=hosts.split(",") if hosts else None,
        cluster=cluster,
    )


@app.command()
def discover(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", "-b", help="Backend(s) to try, in order.")
    ] = None,
    scenario: Annotated[
        str | None, typer.Option(help="For the sim backend: bundled name or .json file.")
    ] = None,
    host_id: Annotated[str | None, typer.Option(help="Host id (default: config host_id).")] = None,
) -> None:
    """List this host's accelerators and their capabilities; say why a backend is missing."""
    from accelpilot.collectors.discovery import discover as run_discovery
    from accelpilot.collectors.discovery import make_backend

    settings = _settings(config)
    names = backend or list(settings.agent.backends)
    host = host_id or settings.host_id
    found = run_discovery(
        [make_backend(n, host, scenario=scenario or settings.agent.scenario) for n in names]
    )
    if as_json:
        typer.echo(json.dumps(found.to_dict(), indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"accelerators on {host}")
    for col in ("device", "kind", "vendor", "model", "memory", "power limits", "capabilities"):
        table.add_column(col)
    for d in found.devices:
        caps = d.capabilities
        limits = caps.power_limits
        table.add_row(
            d.device_id,
            d.kind,
            d.vendor,
            d.model,
            f"{d.memory_total_bytes / 2**30:.0f} GiB" if d.memory_total_bytes else "-",
            f"{limits.min_w:.0f}-{limits.max_w:.0f} W (default {limits.default_w:.0f})"
            if limits
            else "-",
            ", ".join(f"{k}={v}" for k, v in _caps_summary(caps).items()),
        )
    console = Console()
    console.print(table)
    for name, why in found.missing.items():
        console.print(f"[yellow]{name}[/]: {why}")


def _caps_summary(caps: object) -> dict[str, object]:
    from dataclasses import fields

    skip = {"power_limits", "extra"}
    return {
        f.name: getattr(caps, f.name)
        for f in fields(caps)  # type: ignore[arg-type]
        if f.name not in skip and getattr(caps, f.name) is not None
    }


@app.command()
def agent(
    config: ConfigOpt = None,
    backend: Annotated[
        list[str] | None, typer.Option("--backend", "-b", help="Backend(s), in order.")
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="For the sim backend.")] = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between ticks.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Never write a device.")] = False,
    ticks: Annotated[int | None, typer.Option(help="Stop after this many ticks.")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "info",
    log_format: Annotated[str, typer.Option(help="text or json (one object per line).")] = "text",
) -> None:
    """Run the host agent: collect, publish (disk-buffered), apply verified actions."""
    from accelpilot.collectors.agent import run_agent
    from accelpilot.logs import configure

    configure(loglevel, log_format)
    overrides: dict[str, object] = {}
    if backend:
        overrides["backends"] = tuple(backend)
    if scenario:
        overrides["scenario"] = scenario
    if interval:
        overrides["interval_s"] = interval
    if dry_run:
        overrides["dry_run"] = True
    path = config or None
    settings = load_settings(path, agent=overrides) if overrides else _settings(config)
    run_agent(settings, max_ticks=ticks)


@optimizer_app.command("train")
def optimizer_train(
    out: Annotated[
        Path | None, typer.Option(help="Weights file (default: the shipped prior).")
    ] = None,
    minutes: Annotated[float, typer.Option(help="Training budget, at most 10.")] = 2.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train the learned policy's prior on generated scenarios (CPU, <= 10 minutes)."""
    from accelpilot.optimizer.train import DEFAULT_PATH, train

    typer.echo(json.dumps(train(out or DEFAULT_PATH, minutes, seed), indent=2))


@optimizer_app.command("evaluate")
def optimizer_evaluate(
    scenario: Annotated[Path, typer.Option(help="Fleet scenario: a .json file.")],
    policies: Annotated[str, typer.Option()] = "max,static,profile,oracle,learned",
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run policies on one scenario and seed and print the spec's report."""
    from accelpilot.optimizer.evaluate import evaluate_cli

    typer.echo(evaluate_cli(scenario, policies, as_json, seed))


@optimizer_app.command("run")
def optimizer_run(
    scenario: Annotated[
        Path, typer.Option(help="The fleet description: a scenario .json or a bundled name.")
    ],
    mode: Annotated[str | None, typer.Option(help="advise or auto (default: config).")] = None,
    key: Annotated[Path | None, typer.Option(help="Ed25519 private key (PEM).")] = None,
    hosts: Annotated[str | None, typer.Option(help="Comma-separated hosts to steer.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Consume aggregates, anomalies and alerts; emit signed actions (auto) or record
    recommendations (advise); learn from fleet.action-results. Until SIGTERM."""
    import signal
    import threading

    from accelpilot.demo import load_demo_scenario
    from accelpilot.errors import ConfigError
    from accelpilot.logs import configure
    from accelpilot.optimizer.live import run_optimizer

    configure("info")
    s = _settings(config)
    private_key = key or s.optimizer.private_key
    if private_key is None:
        raise ConfigError("optimizer.private_key: give --key or set it in the config")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    opt = run_optimizer(
        s,
        load_demo_scenario(scenario),
        mode or s.optimizer.mode,  # type: ignore[arg-type]
        private_key.expanduser(),
        stop,
        hosts=hosts.split(",") if hosts else None,
        recommendations_path=s.optimizer.recommendations_path.expanduser(),
        group_id=s.optimizer.group_id,
    )
    typer.echo(json.dumps(opt.counters.as_dict()))


WebhookOpt = Annotated[
    str | None,
    typer.Option(
        help="Contact point webhook for Grafana's alerts (default: `accelpilot alerts serve`, "
        "http://127.0.0.1:9095/grafana)."
    ),
]
EmailOpt = Annotated[str | None, typer.Option(help="Contact point e-mail address.")]
WebhookTokenEnvOpt = Annotated[
    str | None,
    typer.Option(help="Environment variable holding the webhook's bearer token (optional)."),
]


@dashboards_app.command("export")
def dashboards_export(
    out: Annotated[Path, typer.Option(help="Directory for Grafana's provisioning tree.")],
    webhook: WebhookOpt = None,
    email: EmailOpt = None,
    webhook_token_env: WebhookTokenEnvOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write datasource, dashboards and alerting provisioning files (Grafana's file layout)."""
    from accelpilot.dashboards.provisioning import export

    s = _settings(config)
    extra = {"webhook_url": webhook} if webhook else {}
    for path in export(
        out,
        influx_url=s.influx.url,
        database=s.influx.database,
        email=email,
        webhook_token_env=webhook_token_env,
        **extra,
    ):
        typer.echo(str(path))


@dashboards_app.command("push")
def dashboards_push(
    url: Annotated[str, typer.Option(help="Grafana base URL.")],
    token: Annotated[
        str, typer.Option(help="Grafana service-account token.", envvar="GRAFANA_TOKEN")
    ],
    webhook: WebhookOpt = None,
    email: EmailOpt = None,
    webhook_token_env: WebhookTokenEnvOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Upsert datasource, folder, dashboards, alert rules, contact points and policies (stable
    uids: running it twice changes nothing)."""
    from accelpilot.dashboards.provisioning import push

    s = _settings(config)
    extra = {"webhook_url": webhook} if webhook else {}
    report = push(
        url,
        token,
        influx_url=s.influx.url,
        database=s.influx.database,
        email=email,
        webhook_token=_env_secret(webhook_token_env),
        **extra,
    )
    typer.echo(report.to_text())


def _alerts_store(config: Path | None) -> Path:
    path = _settings(config).alerts.store_path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option(help="Directory for <name>.key (0600) and <name>.pub.")],
    name: Annotated[str, typer.Option(help="File name stem.")] = "accelpilot",
) -> None:
    """A new signing key pair: give the .key to `optimizer run --key` / `console --key`, and
    the .pub to each agent's agent.public_keys directory. Never overwrites a key."""
    from accelpilot.signing import generate_keypair, key_id_of, load_private_key

    private, public = generate_keypair(out.expanduser(), name)
    key_id = key_id_of(load_private_key(private).public_key())
    print(f"private key {private} (keep it on the optimizer/console host only)")
    print(f"public key  {public} (copy it to every agent's agent.public_keys); key id {key_id}")


@alerts_app.command("subscribe")
def alerts_subscribe(
    name: Annotated[str, typer.Option(help="A unique name for this subscription.")],
    webhook: Annotated[str | None, typer.Option(help="Webhook URL.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Webhook body: json or slack.")] = "json",
    email: Annotated[list[str] | None, typer.Option(help="Recipient (repeatable).")] = None,
    smtp_host: Annotated[str | None, typer.Option()] = None,
    smtp_port: Annotated[int, typer.Option()] = 25,
    smtp_from: Annotated[str, typer.Option()] = "accelpilot@localhost",
    starttls: Annotated[bool, typer.Option()] = False,
    smtp_user: Annotated[str | None, typer.Option()] = None,
    smtp_password_env: Annotated[
        str | None, typer.Option(help="Name of the environment variable holding the password.")
    ] = None,
    min_severity: Annotated[str, typer.Option(help="info, warning or critical.")] = "info",
    cluster: Annotated[
        str, typer.Option(help="Cluster glob (anything but * skips alerts of no known cluster).")
    ] = "*",
    host: Annotated[str, typer.Option(help="Host glob.")] = "*",
    device: Annotated[str, typer.Option(help="Device glob.")] = "*",
    kind: Annotated[list[str] | None, typer.Option(help="Alert kind (repeatable).")] = None,
    state: Annotated[list[str] | None, typer.Option(help="firing/resolved (repeatable).")] = None,
    group_window: Annotated[float, typer.Option(help="Seconds to group alerts.")] = 0.0,
    rate_limit: Annotated[int, typer.Option(help="Messages per minute (0 = no limit).")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Subscribe a webhook (generic JSON or Slack) or e-mail recipients to fleet.alerts."""
    import os

    from accelpilot.dashboards.subscriptions import subscribe

    password = os.environ.get(smtp_password_env) if smtp_password_env else None
    if smtp_password_env and password is None:
        raise typer.BadParameter(f"environment variable {smtp_password_env} is not set")
    sub = subscribe(
        _alerts_store(config),
        name=name,
        webhook_url=webhook,
        webhook_format=fmt,
        email_to=tuple(email or ()),
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        smtp_from=smtp_from,
        smtp_starttls=starttls,
        smtp_user=smtp_user,
        smtp_password=password,
        min_severity=min_severity,
        cluster_glob=cluster,
        host_glob=host,
        device_glob=device,
        kinds=tuple(kind or ()),
        states=tuple(state or ("firing", "resolved")),
        group_window_s=group_window,
        rate_limit_per_min=rate_limit,
    )
    typer.echo(sub.describe())


@alerts_app.command("list")
def alerts_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List alert subscriptions (secrets masked) with their pending and dead deliveries."""
    from accelpilot.dashboards.subscriptions import list_subscriptions

    subs = list_subscriptions(_alerts_store(config))
    if as_json:
        typer.echo(json.dumps(subs, indent=2, default=str))
        return
    if not subs:
        typer.echo("no subscriptions")
    for sub in subs:
        typer.echo(
            f"{sub['id']}  {sub['name']}  {sub.get('summary', '')}  "
            f"pending={sub.get('pending_alerts', 0)} dead={sub.get('dead_letters', 0)}"
        )


@alerts_app.command("remove")
def alerts_remove(
    id_or_name: Annotated[str, typer.Argument(help="Subscription id or name.")],
    config: ConfigOpt = None,
) -> None:
    """Remove a subscription (its pending deliveries go; its dead letters stay)."""
    from accelpilot.dashboards.subscriptions import remove_subscription

    sub = remove_subscription(_alerts_store(config), id_or_name)
    typer.echo(f"removed {sub.describe()}")


@alerts_app.command("dead-letters")
def alerts_dead_letters(
    subscription: Annotated[str | None, typer.Option(help="Only this subscription.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Deliveries that were given up, with the last error."""
    from accelpilot.dashboards.subscriptions import list_dead_letters

    typer.echo(
        json.dumps(list_dead_letters(_alerts_store(config), subscription), indent=2, default=str)
    )


def _env_secret(name: str | None) -> str | None:
    import os

    if name and os.environ.get(name) is None:
        raise typer.BadParameter(f"environment variable {name} is not set")
    return os.environ[name] if name else None


@alerts_app.command("serve")
def alerts_serve(
    grafana_listen: Annotated[
        str,
        typer.Option(help="host:port for Grafana's webhook notifications ('' = do not listen)."),
    ] = "127.0.0.1:9095",
    grafana_path: Annotated[str, typer.Option(help="URL path of that endpoint.")] = "/grafana",
    grafana_token_env: Annotated[
        str | None,
        typer.Option(help="Environment variable with the bearer token Grafana must send."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Consume fleet.alerts, receive Grafana's webhook notifications, and deliver both to the
    subscriptions until SIGTERM."""
    from accelpilot.dashboards.alert_service import run_alert_service
    from accelpilot.dashboards.notify import RetryPolicy
    from accelpilot.schemas.topics import ALERTS, DLQ

    listen = None
    if grafana_listen:
        host, _, port = grafana_listen.rpartition(":")
        if not host or not port.isdigit():
            raise typer.BadParameter(f"--grafana-listen: host:port, not {grafana_listen!r}")
        listen = (host, int(port))
    s = _settings(config)
    a = s.alerts
    stats = run_alert_service(
        s.kafka.bootstrap_servers,
        s.topic(ALERTS),
        _alerts_store(config),
        group_id=a.group_id,
        from_beginning=a.from_beginning,
        retry=RetryPolicy(
            a.retry_base_s, a.retry_cap_s, a.retry_jitter, a.max_attempts, a.give_up_after_s
        ),
        http_timeout_s=a.http_timeout_s,
        smtp_timeout_s=a.smtp_timeout_s,
        dlq_topic=s.topic(DLQ),
        grafana_listen=listen,
        grafana_path=grafana_path,
        grafana_token=_env_secret(grafana_token_env),
    )
    typer.echo(json.dumps(dataclasses.asdict(stats), default=str))


@bench_app.command("collector")
def bench_collector(
    as_json: JsonOpt = True,
    ticks: Annotated[int, typer.Option(help="Ticks per device count.")] = 2000,
) -> None:
    """Collector CPU per device-tick (sim backend, 8 and 64 devices) and bytes per tick."""
    from accelpilot.collectors.bench import bench_collector as run

    typer.echo(json.dumps(run(ticks), indent=2))


@bench_app.command("pipeline")
def bench_pipeline(
    as_json: JsonOpt = True,
    hosts: Annotated[int, typer.Option(help="Simulated hosts.")] = 1000,
    devices: Annotated[int, typer.Option(help="GPUs per host.")] = 8,
    ticks: Annotated[int, typer.Option(help="Ticks per host in the throughput phase.")] = 60,
    latency_s: Annotated[
        float,
        typer.Option(
            help="Seconds of the latency phase (60 s: ~125 alerts, so the p99 is not just the "
            "slowest of a few; 300 s also catches the rarer stalls: docs/streams.md Round 8)."
        ),
    ] = 60.0,
    latency_load: Annotated[
        float, typer.Option(help="Latency phase rate, as a fraction of the measured drain rate.")
    ] = 0.5,
    latency_rate: Annotated[
        float | None,
        typer.Option(
            help="Latency phase rate in device-samples/s (overrides --latency-load; A/Bs at "
            "the same offered load)."
        ),
    ] = None,
    naive_hosts: Annotated[int, typer.Option(help="Hosts for the naive design.")] = 100,
    naive_ticks: Annotated[int, typer.Option(help="Ticks for the naive design.")] = 10,
    profile: Annotated[
        Path | None,
        typer.Option(help="py-spy the worker's drain into FILE (raw stacks); top entries in JSON."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Pipeline throughput, latency and CPU against the real broker, ours vs a naive design.
    Needs `accelpilot stack up`; progress on stderr, JSON on stdout."""
    from accelpilot.streams.bench_pipeline import bench_pipeline as run

    result = run(
        _settings(config),
        hosts=hosts,
        devices=devices,
        ticks=ticks,
        latency_s=latency_s,
        latency_load=latency_load,
        latency_rate=latency_rate,
        naive_hosts=naive_hosts,
        naive_ticks=naive_ticks,
        profile=profile,
        progress=lambda m: typer.echo(m, err=True),
    )
    typer.echo(json.dumps(result, indent=2))


@bench_app.command("detectors")
def bench_detectors(as_json: JsonOpt = True) -> None:
    """Detector throughput (device-samples/s), side by side with River's HalfSpaceTrees."""
    from accelpilot.detectors.bench import bench_detectors as run

    typer.echo(json.dumps(run(), indent=2))


DetectorOpt = Annotated[
    str | None, typer.Option("--detector", "-d", help="Detector name (default: the ensemble).")
]


@detect_app.command("csv")
def detect_csv(
    src: Annotated[Path, typer.Argument(help="A timestamp,value CSV file.")],
    out: Annotated[Path, typer.Option(help="Output CSV: timestamp,value,anomaly_score.")],
    detector: DetectorOpt = None,
) -> None:
    """Score a timestamp,value CSV, strictly streaming."""
    from accelpilot.detectors.nab_runner import score_csv
    from accelpilot.detectors.registry import DEFAULT_DETECTOR

    score_csv(src, out, detector or DEFAULT_DETECTOR)


@detect_app.command("nab")
def detect_nab(
    data: Annotated[Path, typer.Option(help="NAB data dir: <category>/*.csv.")],
    out: Annotated[Path, typer.Option(help="Results dir: <category>/<NAME>_<file>.csv.")],
    detector: DetectorOpt = None,
) -> None:
    """Write NAB results files for every <category>/*.csv under DATA."""
    from accelpilot.detectors.nab_runner import run_nab
    from accelpilot.detectors.registry import NAB_DETECTOR

    run_nab(data, out, detector or NAB_DETECTOR)


@detect_app.command("train-failure")
def detect_train_failure(
    out: Annotated[
        Path | None, typer.Option(help="Model JSON (default: the shipped detectors/weights).")
    ] = None,
) -> None:
    """Train the learned failure model on simulated fault traces; print held-out metrics."""
    from accelpilot.detectors.failure_train import SHIPPED_PATH, markdown_table, train

    record = train(out or SHIPPED_PATH)
    typer.echo(json.dumps(record, indent=1))
    typer.echo(markdown_table(record["held_out"]))


def main() -> None:
    try:
        app()
    except AccelpilotError as e:
        print(f"accelpilot: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
