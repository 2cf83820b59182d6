"""The cpu backend on captured /proc and /sys trees (a 2-socket host with RAPL, and a VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelpilot.collectors.backends.cpu import CpuBackend

CPUINFO = """processor\t: {i}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
cpu MHz\t\t: {mhz}

"""


def _tree(
    root: Path, *, sockets: int = 2, cpus_per: int = 2, rapl: bool = True
) -> tuple[Path, Path]:
    proc, sys = root / "proc", root / "sys"
    proc.mkdir(parents=True)
    n = sockets * cpus_per
    (proc / "cpuinfo").write_text(
        "".join(CPUINFO.format(i=i, mhz=2000 + 100 * i) for i in range(n))
    )
    _stat(proc, [(100, 900)] * n)
    for i in range(n):
        topo = sys / f"devices/system/cpu/cpu{i}/topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{i // cpus_per}\n")
        freq = sys / f"devices/system/cpu/cpu{i}/cpufreq"
        freq.mkdir(parents=True)
        (freq / "cpuinfo_max_freq").write_text("3800000\n")
    if rapl:
        for s in range(sockets):
            zone = sys / f"class/powercap/intel-rapl:{s}"
            zone.mkdir(parents=True)
            (zone / "name").write_text(f"package-{s}\n")
            (zone / "energy_uj").write_text("1000000\n")
            (zone / "max_energy_range_uj").write_text("262143328850\n")
            (zone / "constraint_0_power_limit_uw").write_text("350000000\n")
            (zone / "constraint_0_max_power_uw").write_text("350000000\n")
            sub = sys / f"class/powercap/intel-rapl:{s}:0"  # a dram subzone: not a package
            sub.mkdir(parents=True)
            (sub / "energy_uj").write_text("5\n")
    return proc, sys


def _stat(proc: Path, busy_idle: list[tuple[int, int]]) -> None:
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for i, (busy, idle) in enumerate(busy_idle):
        lines.append(f"cpu{i} {busy} 0 0 {idle} 0 0 0 0 0 0")
    (proc / "stat").write_text("\n".join(lines) + "\nintr 0\n")


class Clock:
    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def test_discovers_one_device_per_socket(tmp_path: Path) -> None:
    proc, sys = _tree(tmp_path)
    devices = CpuBackend("h1", proc_root=proc, sys_root=sys).discover()
    assert [d.device_id for d in devices] == ["h1/cpu0", "h1/cpu1"]
    assert devices[0].vendor == "intel"
    assert devices[0].model == "Intel(R) Xeon(R) Platinum 8480+"
    assert devices[0].capabilities.max_clock_sm_mhz == 3800.0
    assert devices[0].capabilities.extra == {
        "logical_cpus": 2,
        "rapl": True,
        "rapl_max_power_w": 350.0,
    }


def test_reads_utilization_clock_power_energy_cap(tmp_path: Path) -> None:
    proc, sys = _tree(tmp_path)
    clock = Clock()
    backend = CpuBackend("h1", proc_root=proc, sys_root=sys, clock_ns=clock)
    first = backend.read()
    assert first.metrics["util_compute_pct"] == [None, None]  # needs two readings
    assert first.metrics["power_w"] == [None, None]
    assert first.metrics["energy_j"] == [0.0, 0.0]
    # 1 s later: socket 0 busy 75% of its jiffies, 250 J drawn (250 W); socket 1 idle.
    clock.ns += 10**9
    _stat(proc, [(175, 925), (175, 925), (100, 1000), (100, 1000)])
    (sys / "class/powercap/intel-rapl:0/energy_uj").write_text(f"{1_000_000 + 250_000_000}\n")
    second = backend.read()
    assert second.metrics["util_compute_pct"] == [75.0, 0.0]
    assert second.metrics["power_w"] == [250.0, 0.0]
    assert second.metrics["energy_j"] == [250.0, 0.0]
    assert second.metrics["clock_sm_mhz"] == [2050.0, 2250.0]
    assert second.metrics["cap_w"] == [350.0, 350.0]


def test_energy_counter_wraparound(tmp_path: Path) -> None:
    proc, sys = _tree(tmp_path, sockets=1)
    zone = sys / "class/powercap/intel-rapl:0"
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    (zone / "energy_uj").write_text("999000000\n")
    clock = Clock()
    backend = CpuBackend("h1", proc_root=proc, sys_root=sys, clock_ns=clock)
    backend.read()
    clock.ns += 2 * 10**9
    (zone / "energy_uj").write_text("1000000\n")  # wrapped: 1 J to the top + 1 J after
    reading = backend.read()
    assert reading.metrics["energy_j"] == [pytest.approx(2.0)]
    assert reading.metrics["power_w"] == [pytest.approx(1.0)]


def test_without_rapl_power_is_absent_not_zero(tmp_path: Path) -> None:
    proc, sys = _tree(tmp_path, sockets=1, rapl=False)
    backend = CpuBackend("vm", proc_root=proc, sys_root=sys)
    backend.read()
    reading = backend.read()
    for name in ("power_w", "energy_j", "cap_w"):
        assert reading.metrics[name] == [None]
    assert backend.discover()[0].capabilities.extra["rapl"] is False


def test_probe_says_why(tmp_path: Path) -> None:
    status = CpuBackend("h", proc_root=tmp_path / "nope", sys_root=tmp_path).probe()
    assert not status.available
    assert "not readable" in status.reason


def test_this_machine(tmp_path: Path) -> None:
    backend = CpuBackend("local")
    assert backend.probe().available
    devices = backend.discover()
    assert devices and all(d.kind == "cpu" for d in devices)
    reading = backend.read()
    assert set(reading.metrics) >= {"util_compute_pct", "power_w"}
    assert all(len(col) == len(devices) for col in reading.metrics.values())
