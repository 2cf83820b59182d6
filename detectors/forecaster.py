"""Small PyTorch forecaster: one tiny MLP shared by every (series, metric) channel.

Each channel is standardized by its own robust EW statistics; the model reads the last
``context`` standardized values and predicts the next one. The score is the surprise of the
forecast error against the channel's EW error scale, calibrated. Training happens every
``train_every`` instants on a bounded reservoir of past (window, next value) pairs, so the
score at ``t`` only uses a model fitted on data before ``t``. ~1k parameters, CPU, torch is
imported on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from accelpilot.detectors.base import BatchDetector, BoolArray, FloatArray, IntArray
from accelpilot.detectors.calibrate import SurpriseCalibrator, z_to_surprise
from accelpilot.detectors.robust import MAD_TO_SD, EwRobustStats


def _torch() -> Any:
    import torch  # lazy: importing accelpilot.detectors must not pay for torch

    return torch


class TorchForecaster(BatchDetector):
    """Next-value MLP forecaster; score = surprise of the standardized forecast error."""

    name = "forecaster"

    def __init__(
        self,
        n_series: int,
        context: int = 16,
        hidden: int = 32,
        train_every: int = 200,
        train_steps: int = 20,
        batch_size: int = 128,
        reservoir: int = 4096,
        per_step_samples: int = 32,
        min_train: int = 128,
        lr: float = 3e-3,
        error_alpha: float = 0.02,
        s_half: float = 3.0,
        decay: float = 0.999,
        seed: int = 0,
    ) -> None:
        super().__init__(n_series)
        self.context = int(context)
        self.hidden = int(hidden)
        self.train_every = int(train_every)
        self.train_steps = int(train_steps)
        self.batch_size = int(batch_size)
        self.per_step_samples = int(per_step_samples)
        self.min_train = int(min_train)
        self.lr = float(lr)
        self.error_alpha = float(error_alpha)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.res_x = np.zeros((int(reservoir), self.context), np.float32)
        self.res_y = np.zeros(int(reservoir), np.float32)
        self.res_seen = 0
        self.steps = 0
        self.model: Any = None
        self.optimizer: Any = None
        self.window = np.zeros((0, self.context))  # (channels, context), standardized
        self.filled = np.zeros(0, np.int64)
        self.level = EwRobustStats(1, 1, (0.01,))
        self.err = EwRobustStats(1, 1, (error_alpha,))
        self.calibrator = SurpriseCalibrator(n_series, s_half, decay)

    def _build(self, n_channels: int) -> None:
        torch = _torch()
        gen = torch.Generator().manual_seed(self.seed)
        layers = [
            torch.nn.Linear(self.context, self.hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(self.hidden, 1),
        ]
        with torch.no_grad():
            for layer in layers[::2]:
                bound = 1.0 / np.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.zero_()
        self.model = torch.nn.Sequential(*layers)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.window = np.zeros((n_channels, self.context))
        self.filled = np.zeros(n_channels, np.int64)
        self.level = EwRobustStats(n_channels, 1, (0.01,))
        self.err = EwRobustStats(n_channels, 1, (self.error_alpha,))

    def _predict(self, windows: FloatArray) -> FloatArray:
        torch = _torch()
        with torch.no_grad():
            out = self.model(torch.from_numpy(windows.astype(np.float32)))
        return out[:, 0].numpy().astype(np.float64)

    def _train(self) -> None:
        torch = _torch()
        n = min(self.res_seen, len(self.res_y))
        for _ in range(self.train_steps):
            idx = self.rng.integers(0, n, size=min(self.batch_size, n))
            x = torch.from_numpy(self.res_x[idx])
            y = torch.from_numpy(self.res_y[idx])
            loss = torch.nn.functional.huber_loss(self.model(x)[:, 0], y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def _remember(self, x: FloatArray, y: FloatArray) -> None:
        """Reservoir sampling of training pairs (bounded memory, uniform over the past)."""
        if len(y) > self.per_step_samples:
            pick = self.rng.choice(len(y), self.per_step_samples, replace=False)
            x, y = x[pick], y[pick]
        cap = len(self.res_y)
        for xi, yi in zip(x, y, strict=True):
            if self.res_seen < cap:
                slot = self.res_seen
            else:
                slot = int(self.rng.integers(0, self.res_seen + 1))
            if slot < cap:
                self.res_x[slot] = xi
                self.res_y[slot] = yi
            self.res_seen += 1

    def _update_score(self, values: FloatArray, ts_ns: IntArray, present: BoolArray) -> FloatArray:
        n, f = values.shape
        if self.model is None or self.window.shape[0] != n * f:
            self._build(n * f)
        v = values.reshape(-1, 1)
        here = ~np.isnan(v[:, 0])
        loc, dev = self.level.loc[:, 0, 0], self.level.dev[:, 0, 0]
        scale = np.maximum(MAD_TO_SD * dev, 1e-3 * np.abs(loc) + 1e-9)
        target = np.clip(np.where(here, (v[:, 0] - loc) / scale, 0.0), -20.0, 20.0)
        ready = here & (self.filled >= self.context) & (self.level.count[:, 0] >= self.context)

        error = np.full(n * f, np.nan)
        trained = self.res_seen >= self.min_train and self.steps >= self.train_every
        if trained and ready.any():
            error[ready] = target[ready] - self._predict(self.window[ready])
        z = self.err.z_then_update(error[:, None], 10, rel_floor=0.0)[:, 0, 0]
        surprise = z_to_surprise(z.reshape(n, f).max(axis=1))

        if ready.any():
            self._remember(self.window[ready], target[ready])
        self.level.z_then_update(v, 1, rel_floor=1e-3)
        rolled = np.concatenate([self.window[:, 1:], target[:, None]], axis=1)
        self.window = np.where(here[:, None], rolled, self.window)
        self.filled = self.filled + here
        self.steps += 1
        if self.steps % self.train_every == 0 and self.res_seen >= self.min_train:
            self._train()
        return self.calibrator.update(
            surprise, present & ~np.isnan(error).reshape(n, f).all(axis=1)
        )
