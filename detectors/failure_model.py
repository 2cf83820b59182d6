"""The learned failure model: a logistic regression over :mod:`.failure_features`, stored as JSON.

``P(device fails within horizon_s | features) = sigmoid(intercept + coef . (x - mean) / scale)``.
The weights live in ``detectors/weights/failure_model.json`` (plain JSON: names, numbers and the
training record, nothing executable), written by :mod:`.failure_train` and read back here without
scikit-learn. A file whose ``format``/``version`` or feature list does not match this code is
refused with a message saying how to rebuild it.

``floor``: probabilities below it count as 0 (the model's base rate on healthy devices is a few
percent; below the floor it says nothing, so a healthy device's risk stays exactly the rules'
0 and alert reasons stay clean).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from accelpilot.detectors.base import FloatArray
from accelpilot.detectors.failure_features import FEATURES
from accelpilot.errors import ConfigError

FORMAT = "accelpilot.failure_model"
VERSION = 1
SHIPPED_PATH = Path(__file__).parent / "weights" / "failure_model.json"


@dataclass(frozen=True)
class FailureModel:
    """Logistic failure model (see the module docstring)."""

    mean: FloatArray
    scale: FloatArray
    coef: FloatArray
    intercept: float
    horizon_s: float
    threshold: float
    floor: float
    features: tuple[str, ...] = FEATURES
    record: dict[str, Any] = field(default_factory=dict)

    def probability(self, x: FloatArray) -> FloatArray:
        """Raw ``P(fail within horizon)`` per row of ``x`` ``(n, n_features)``."""
        z = self.intercept + ((x - self.mean) / self.scale) @ self.coef
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))

    def risk(self, x: FloatArray) -> FloatArray:
        """:meth:`probability` with values below ``floor`` set to 0."""
        p = self.probability(x)
        return np.where(p >= self.floor, p, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": "logistic",
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "horizon_s": self.horizon_s,
            "threshold": self.threshold,
            "floor": self.floor,
            "record": self.record,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "failure model") -> FailureModel:
        rebuild = "rebuild it with `accelpilot detect train-failure --out PATH`"
        if d.get("format") != FORMAT or d.get("version") != VERSION or d.get("kind") != "logistic":
            raise ConfigError(
                f"{source}: not a {FORMAT} v{VERSION} logistic model "
                f"(format={d.get('format')!r}, version={d.get('version')!r}); {rebuild}"
            )
        if tuple(d.get("features", ())) != FEATURES:
            raise ConfigError(
                f"{source}: trained on features {d.get('features')}, this code computes "
                f"{list(FEATURES)}; {rebuild}"
            )
        n = len(FEATURES)
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "coef")}
        for k, a in arrays.items():
            if a.shape != (n,) or not np.isfinite(a).all():
                raise ConfigError(f"{source}: {k!r} must be {n} finite numbers; {rebuild}")
        if (arrays["scale"] <= 0).any():
            raise ConfigError(f"{source}: 'scale' must be > 0; {rebuild}")
        return cls(
            mean=arrays["mean"],
            scale=arrays["scale"],
            coef=arrays["coef"],
            intercept=float(d["intercept"]),
            horizon_s=float(d["horizon_s"]),
            threshold=float(d["threshold"]),
            floor=float(d["floor"]),
            record=dict(d.get("record", {})),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> FailureModel:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read failure model {path}: {e}") from e
        return cls.from_dict(doc, str(path))


@lru_cache(maxsize=1)
def shipped() -> FailureModel:
    """The model shipped with the package (``detectors/weights/failure_model.json``)."""
    return FailureModel.load(SHIPPED_PATH)
