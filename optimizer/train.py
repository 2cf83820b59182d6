"""Offline training of the learned policy's prior (:mod:`accelpilot.optimizer.prior`).

Data: 200 scenarios from :func:`accelpilot.optimizer.generate.generate` (seeds ``seed*100000 + i``,
disjoint from the unseen-scenario seeds the tests use), each run uncapped (the ``max`` policy,
which is how the learned policy starts and what it sees after a phase change). From every
device-tick with work, the telemetry gives ``u_obs = (P_obs - idle) / D`` (``P_obs`` = power
scaled to full load by the busy fraction); the target is the stream's true ``β``. A 2-layer tanh
MLP (PyTorch, CPU, one thread) regresses ``β`` on ``(u_obs, u_obs², kind one-hot)``; the weights
are written as JSON so inference needs no torch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from accelpilot.errors import ConfigError
from accelpilot.optimizer.generate import generate
from accelpilot.optimizer.prior import DEFAULT_PATH, N_FEATURES, features
from accelpilot.optimizer.simulator import FleetSimulator

MAX_MINUTES = 10.0


N_SCENARIOS = 200
EPOCHS = 3000


def _out_of_time(deadline: float, minutes: float) -> None:
    if time.monotonic() > deadline:
        raise ConfigError(
            f"optimizer training did not finish within {minutes:g} minutes on this machine; "
            f"pass --minutes up to {MAX_MINUTES:g} (the result does not depend on it)"
        )


def collect(
    seed: int, n_scenarios: int, deadline: float, minutes: float = MAX_MINUTES
) -> tuple[np.ndarray, np.ndarray]:
    """All ``n_scenarios`` or an error: a partial collection would make the weights depend on
    the machine's speed."""
    xs, ys = [], []
    for i in range(n_scenarios):
        _out_of_time(deadline, minutes)
        sc = generate(seed * 100_000 + i, duration_s=900)
        sim = FleetSimulator(sc)
        member = sim.membership
        idle, dyn = sim.idle_w, sim.tdp_w - sim.idle_w
        kinds = [d.kind for d in sc.devices]
        for _ in range(0, sc.n_ticks):
            c = sim.conditions() if sim.tick % 30 == 0 else None
            res = sim.step()
            if c is None:
                continue
            tel = res.telemetry
            for s in range(member.shape[0]):
                for d in np.flatnonzero(member[s] & (member.sum(axis=0) == 1)):
                    busy = tel.util_pct[d] / 100.0
                    if not tel.reporting[d] or busy < 0.2 or c.throttle[d]:
                        continue
                    p_obs = idle[d] + (tel.power_w[d] - idle[d]) / busy
                    u_obs = float(np.clip((p_obs - idle[d]) / dyn[d], 0.05, 1.0))
                    xs.append(features(u_obs, kinds[d]))
                    ys.append(c.beta[s])
    return np.array(xs), np.array(ys)


def train(out_path: str | Path = DEFAULT_PATH, minutes: float = 2.0, seed: int = 0) -> dict:
    """Train the prior and write it to ``out_path``; returns stats. The data (``N_SCENARIOS``
    generated scenarios) and the ``EPOCHS`` steps are fixed, so the weights depend only on
    ``seed`` (bit for bit on one platform); ``minutes`` (≤ 10) is a hard stop that raises
    :class:`ConfigError` rather than shipping a cut-short result."""
    import torch  # lazily: only training needs it

    minutes = min(float(minutes), MAX_MINUTES)
    t0 = time.monotonic()
    deadline = t0 + 60.0 * minutes
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    x, y = collect(seed, N_SCENARIOS, deadline, minutes)
    n = len(x)
    idx = np.random.default_rng(seed).permutation(n)
    n_val = max(1, n // 10)
    val, tr = idx[:n_val], idx[n_val:]
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 1),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    lo, hi = 0.02, 1.0

    def predict(inp: torch.Tensor) -> torch.Tensor:
        return lo + (hi - lo) * torch.sigmoid(net(inp)[:, 0])

    epochs = 0
    for epochs in range(1, EPOCHS + 1):
        _out_of_time(deadline, minutes)
        batch = torch.tensor(np.random.default_rng(epochs).choice(tr, size=min(512, len(tr))))
        loss = torch.mean((predict(xt[batch]) - yt[batch]) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        val_mae = float(torch.mean(torch.abs(predict(xt[val]) - yt[val])))
        base_mae = float(torch.mean(torch.abs(yt[val] - yt[tr].mean())))
    layers = [
        {"weight": m.weight.detach().numpy().tolist(), "bias": m.bias.detach().numpy().tolist()}
        for m in net
        if isinstance(m, torch.nn.Linear)
    ]
    stats = {
        "samples": n,
        "epochs": epochs,
        "val_mae": val_mae,
        "baseline_mae": base_mae,
        "seconds": time.monotonic() - t0,
        "seed": seed,
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps({"layers": layers, "stats": stats}), encoding="utf-8")
    return stats


if __name__ == "__main__":  # pragma: no cover
    print(train())
