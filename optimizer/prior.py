"""The learned prior of the ``learned`` policy: a small MLP, trained offline with PyTorch
(:mod:`accelpilot.optimizer.train`) on generated scenarios, that guesses a stream's ``β`` from
what the first uncapped ticks of telemetry reveal (the estimated ``util`` and the device kind).

Inference is a numpy mirror of the torch network (two tanh layers), so running a policy never
imports torch; the weights ship as JSON in ``optimizer/weights/prior.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from accelpilot.optimizer.scenario import DEVICE_KINDS

Array = NDArray[np.float64]
DEFAULT_PATH = Path(__file__).parent / "weights" / "prior.json"
FALLBACK_BETA = 0.25


def features(util: float, kind: str) -> Array:
    onehot = [1.0 if kind == k else 0.0 for k in DEVICE_KINDS]
    return np.array([util, util * util, *onehot])


N_FEATURES = 2 + len(DEVICE_KINDS)


@dataclass(frozen=True, slots=True)
class BetaPrior:
    layers: tuple[tuple[Array, Array], ...]
    lo: float = 0.02
    hi: float = 1.0

    def __call__(self, util: float, kind: str) -> float:
        h = features(util, kind)
        for i, (w, b) in enumerate(self.layers):
            h = w @ h + b
            if i < len(self.layers) - 1:
                h = np.tanh(h)
        z = 1.0 / (1.0 + np.exp(-float(h[0])))
        return self.lo + (self.hi - self.lo) * z

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> BetaPrior | None:
        p = Path(path)
        if not p.exists():
            return None
        data = json.loads(p.read_text(encoding="utf-8"))
        layers = tuple(
            (np.array(layer["weight"], dtype=float), np.array(layer["bias"], dtype=float))
            for layer in data["layers"]
        )
        return cls(layers=layers)


def prior_beta(prior: BetaPrior | None, util: float, kind: str) -> float:
    return FALLBACK_BETA if prior is None else prior(util, kind)
