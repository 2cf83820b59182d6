"""A real InfluxDB OSS 1.12 server on 127.0.0.1, built from source once and cached.

InfluxDB 1.11/1.12 have no replace directives, so ``go install .../cmd/influxd@vX`` works. Its
Flux engine (libflux, Rust) is built by the influxdata pkg-config wrapper, which must come first on
PATH. Flux v0.196.1 denies warnings and pins Rust 1.72; we build it with the installed toolchain
(``RUSTUP_TOOLCHAIN``) and a ``RUSTC_WRAPPER`` that caps lints at warn for host and target crates
alike (``RUSTFLAGS`` does not reach the host-side build of flux-core when ``--target`` is given).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from accelpilot.config import Settings
from accelpilot.errors import StackError
from accelpilot.stack import process

PKG_CONFIG_WRAPPER = "github.com/influxdata/pkg-config@v0.2.14"
INFLUXD_MODULE = "github.com/influxdata/influxdb/cmd/influxd"

_RUSTC_WRAPPER = """#!/bin/sh
# RUSTC_WRAPPER: cap lints at warn for every crate (host and target), unless cargo already did.
rustc="$1"; shift
case " $* " in *" --cap-lints"*) exec "$rustc" "$@";; esac
exec "$rustc" "$@" --cap-lints=warn
"""

_CONFIG = """reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{run}/meta"

[data]
  dir = "{run}/data"
  wal-dir = "{run}/wal"
  query-log-enabled = false
  index-version = "inmem"
  wal-fsync-delay = "0s"
  # The cache is written out as TSM files each time it holds this much (default 25m). The
  # worker's aggregates are ~50-field lines over thousands of devices: at 25m each snapshot
  # holds a few values per series and the compactions redo the work; 256m took InfluxDB's CPU
  # for the bench backlog's writes from 25.0-25.7 to 17.7 s, the deferred snapshot included
  # (docs/streams.md, "InfluxDB's cache"). Memory: up to 256 MB of cache per active shard.
  cache-snapshot-memory-size = "256m"

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  log-enabled = false
  flux-enabled = true
  max-body-size = 0

[logging]
  level = "warn"

[continuous_queries]
  enabled = false
"""

Progress = Callable[[str], None]


class InfluxServer:
    def __init__(self, settings: Settings) -> None:
        st = settings.stack
        self.version = st.influx_version
        self.port = st.influx_port
        self.rpc_port = st.influx_rpc_port
        self.database = settings.influx.database
        self.cache = st.cache_dir.expanduser() / "influxdb"
        self.binary = self.cache / self.version / "bin" / "influxd"
        self.run_dir = st.run_dir.expanduser() / "influxdb"
        self.pid_file = self.run_dir / "influxd.pid"
        self.log_file = self.run_dir / "influxd.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.timeout_s = st.start_timeout_s

    # -- binary -------------------------------------------------------------------------------
    def binary_present(self) -> bool:
        return self.binary.exists() and os.access(self.binary, os.X_OK)

    def build(self, progress: Progress = print) -> None:
        """Build influxd from source into the cache (once; 10-25 minutes on 2 cores)."""
        if self.binary_present():
            return
        go = shutil.which("go")
        if go is None:
            raise StackError("influxdb:build", "Go is not on PATH; install Go >= 1.22")
        for tool, hint in (
            ("cargo", "install Rust (rustup)"),
            ("gcc", "install gcc"),
            ("pkg-config", "install pkgconf (apt-get install pkgconf)"),
        ):
            if shutil.which(tool) is None:
                raise StackError("influxdb:build", f"{tool} is not on PATH; {hint}")
        wrapper_bin = self.cache / "pkgconfig-bin"
        wrapper_bin.mkdir(parents=True, exist_ok=True)
        rustc_wrapper = self.cache / "rustc-cap-lints"
        rustc_wrapper.write_text(_RUSTC_WRAPPER)
        rustc_wrapper.chmod(0o755)
        env = dict(os.environ)
        env.update(GOBIN=str(wrapper_bin), GOFLAGS="-mod=mod", CGO_ENABLED="1")
        log = self.cache / f"build-{self.version}.log"
        self._run_logged(
            "influxdb:pkg-config-wrapper", [go, "install", PKG_CONFIG_WRAPPER], env, log, progress
        )
        env.update(
            GOBIN=str(self.binary.parent),
            PATH=f"{wrapper_bin}{os.pathsep}{env.get('PATH', '')}",
            RUSTUP_TOOLCHAIN=_rust_toolchain(),
            RUSTC_WRAPPER=str(rustc_wrapper),
        )
        ldflags = f"-X main.version={self.version} -X main.branch=accelpilot-go-install"
        self._run_logged(
            "influxdb:build",
            [go, "install", f"-ldflags={ldflags}", f"{INFLUXD_MODULE}@v{self.version}"],
            env,
            log,
            progress,
        )
        if not self.binary_present():
            raise StackError("influxdb:build", f"go install finished but {self.binary} is missing")

    @staticmethod
    def _run_logged(
        step: str, argv: list[str], env: dict[str, str], log: Path, progress: Progress
    ) -> None:
        started = time.monotonic()
        with log.open("a") as out:
            out.write(f"\n$ {' '.join(argv)}\n")
            out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
            next_note = started + 30
            while proc.poll() is None:
                time.sleep(1)
                if time.monotonic() >= next_note:
                    last = _last_line(log)
                    progress(f"  {step}: {time.monotonic() - started:.0f} s ... {last[:100]}")
                    next_note += 30
        if proc.returncode != 0:
            raise StackError(
                step, f"exited {proc.returncode}; see {log}:\n" + process.log_tail(log, 25)
            )

    # -- lifecycle ----------------------------------------------------------------------------
    def pid(self) -> int | None:
        return process.read_pid(self.pid_file)

    def start(self) -> None:
        if self.pid() is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "influxdb.conf"
        config.write_text(_CONFIG.format(run=self.run_dir, port=self.port, rpc_port=self.rpc_port))
        argv = [str(self.binary), "run", "-config", str(config)]
        process.start_daemon("influxdb:start", argv, self.pid_file, self.log_file)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _alive_after(self, delay_s: float) -> bool:
        time.sleep(delay_s)
        return self.pid() is not None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            # Read twice before calling it dead: right after the start, /proc of a just-started
            # server has been seen not to match its pid file for a moment on a loaded machine.
            if self.pid() is None and not self._alive_after(0.5):
                raise StackError(
                    "influxdb:wait-ready",
                    "influxd exited; log tail:\n" + process.log_tail(self.log_file),
                )
            if self.healthy():
                return
            time.sleep(0.3)
        raise StackError(
            "influxdb:wait-ready",
            f"/health did not pass within {self.timeout_s:.0f} s; see {self.log_file}",
        )

    def create_database(self, name: str | None = None) -> None:
        influxql(self.url, f'CREATE DATABASE "{name or self.database}"')

    def stop(self) -> bool:
        return process.stop_pid(self.pid_file, timeout_s=20)

    def wipe(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def influxql(url: str, query: str, database: str | None = None) -> dict:  # type: ignore[type-arg]
    """Run one InfluxQL statement through the v1 ``/query`` API and return the parsed JSON."""
    import json

    params = {"q": query, "epoch": "ns"}
    if database:
        params["db"] = database
    data = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(f"{url}/query", data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise StackError("influxdb:query", f"{e.code} {e.read()[:300]!r} for {query!r}") from e
    except (urllib.error.URLError, OSError) as e:
        raise StackError("influxdb:query", f"{url} unreachable: {e}") from e
    for result in body.get("results", []):
        if "error" in result:
            raise StackError("influxdb:query", f"{result['error']} for {query!r}")
    return body  # type: ignore[no-any-return]


def _rust_toolchain() -> str:
    """The installed toolchain to use instead of the 1.72 that flux's rust-toolchain.toml pins."""
    if shutil.which("rustup") is None:
        return "stable"
    out = subprocess.run(
        ["rustup", "toolchain", "list"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    names = [line.split()[0] for line in out if line.strip()]
    for name in names:
        if name.startswith("stable"):
            return name
    return names[0] if names else "stable"


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 400))
            lines = f.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""
    except OSError:
        return ""
