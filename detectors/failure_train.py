"""Train and measure the learned failure model on simulated fault traces.

``python -m accelpilot.detectors.failure_train --out PATH`` (or ``accelpilot detect
train-failure --out PATH``) simulates the training traces (:data:`.failure_traces.TRAIN`),
fits a logistic regression (scikit-learn) on the streaming features, then measures it at the
operating threshold 0.5 (the failure-risk alert threshold) and at thresholds chosen on the
*training* traces, on the held-out traces
(:data:`.failure_traces.TEST`: other seeds, 3 h instead of 2 h, 12-device fleets instead of 3-8)
side by side with the rules alone, and writes the model (JSON, with the whole record) to PATH.

Event metrics (:func:`event_metrics`), at a threshold ``thr`` on a risk series per device:

- an *alarm* starts at a sample where the risk is ``>= thr`` and no alarm is on; it stays on
  until the risk falls below ``0.6 thr`` (the failure-risk alert channel's on 0.5 / off 0.3);
  it is *true* when the device fails within ``horizon_s`` after its start, else *false*;
- ``precision`` = true alarms / alarms; ``recall`` = failures with the risk ``>= thr`` at some
  sample in the ``horizon_s`` before the failure / failures; ``F1`` from those two;
- ``lead`` of a predicted failure = failure time - the first sample in that window at or above
  ``thr`` (median and 10th percentile over predicted failures);
- false alarms per device-day = false alarms / (device-seconds observed before failure / 86400).

Only samples before a device's failure are scored (after it the device is gone).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from accelpilot.detectors.failure_features import FEATURES
from accelpilot.detectors.failure_model import SHIPPED_PATH, FailureModel
from accelpilot.detectors.failure_traces import (
    TEST,
    TEST_SMALL,
    TRAIN,
    Traces,
    TraceSpec,
    run_traces,
)

HORIZON_S = 1800.0
FLOOR = 0.05
#: The operating threshold: the failure-risk alert channel's ``risk_on`` (streams.alerting).
OPERATING = 0.5
#: An alarm ends when the risk falls below this fraction of the threshold (AlertConfig: 0.3/0.5).
OFF_RATIO = 0.6
C_REG = 1.0
THRESHOLDS = tuple(np.round(np.arange(0.1, 0.95, 0.05), 2).tolist())


@dataclass(frozen=True)
class EventMetrics:
    threshold: float
    precision: float
    recall: float
    f1: float
    lead_median_s: float
    lead_p10_s: float
    false_alarms_per_device_day: float
    alarms: int
    failures: int
    predicted: int

    def row(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def event_metrics(
    risk: np.ndarray, t_s: np.ndarray, fail_s: np.ndarray, thr: float, horizon_s: float
) -> EventMetrics:
    """Event metrics of ``risk`` ``(samples, devices)`` (see the module docstring)."""
    valid = t_s[:, None] < fail_s[None, :]
    above = (risk >= thr) & valid
    # Alarm episodes with the alert channel's hysteresis: on at >= thr, off below OFF_RATIO*thr.
    on = np.zeros(risk.shape[1], bool)
    start = np.zeros_like(above)
    off_thr = OFF_RATIO * thr
    for k in range(risk.shape[0]):
        start[k] = above[k] & ~on
        on = np.where(on, (risk[k] >= off_thr) & valid[k], above[k])
    s_idx, d_idx = np.nonzero(start)
    true = fail_s[d_idx] <= t_s[s_idx] + horizon_s
    n_alarms = int(start.sum())
    n_false = int((~true).sum())
    failed = np.flatnonzero(np.isfinite(fail_s) & (fail_s <= t_s[-1]))
    leads = []
    for d in failed.tolist():
        win = (t_s >= fail_s[d] - horizon_s) & (t_s < fail_s[d]) & above[:, d]
        if win.any():
            leads.append(fail_s[d] - t_s[np.argmax(win)])
    dt = float(t_s[1] - t_s[0]) if len(t_s) > 1 else 1.0
    device_days = float(valid.sum()) * dt / 86400.0
    precision = (n_alarms - n_false) / n_alarms if n_alarms else 0.0
    recall = len(leads) / len(failed) if len(failed) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return EventMetrics(
        threshold=float(thr),
        precision=precision,
        recall=recall,
        f1=f1,
        lead_median_s=float(np.median(leads)) if leads else 0.0,
        lead_p10_s=float(np.percentile(leads, 10)) if leads else 0.0,
        false_alarms_per_device_day=n_false / device_days if device_days else 0.0,
        alarms=n_alarms,
        failures=len(failed),
        predicted=len(leads),
    )


def best_threshold(risk: np.ndarray, tr: Traces, horizon_s: float = HORIZON_S) -> EventMetrics:
    """The threshold (of :data:`THRESHOLDS`) with the best event F1 on ``tr``."""
    ms = [event_metrics(risk, tr.t_s, tr.fail_s, t, horizon_s) for t in THRESHOLDS]
    return max(ms, key=lambda m: (m.f1, -m.threshold))


def fit(tr: Traces, horizon_s: float = HORIZON_S, c_reg: float = C_REG) -> FailureModel:
    """Logistic regression on every valid sample of ``tr`` (features standardized)."""
    from sklearn.linear_model import LogisticRegression

    y, valid = tr.labels(horizon_s)
    x = tr.features[valid].astype(np.float64)
    yy = y[valid]
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    clf = LogisticRegression(C=c_reg, max_iter=2000)
    clf.fit((x - mean) / scale, yy)
    return FailureModel(
        mean=mean,
        scale=scale,
        coef=clf.coef_[0].astype(np.float64),
        intercept=float(clf.intercept_[0]),
        horizon_s=horizon_s,
        threshold=OPERATING,
        floor=FLOOR,
    )


def model_risk(model: FailureModel, tr: Traces) -> np.ndarray:
    """The model's risk (with its floor) per sample and device."""
    s, n, f = tr.features.shape
    return model.risk(tr.features.reshape(s * n, f).astype(np.float64)).reshape(s, n)


def hgb_reference(tr: Traces, horizon_s: float) -> Any:
    """A gradient-boosted tree model on the same samples (a reference row; not shipped)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    y, valid = tr.labels(horizon_s)
    return HistGradientBoostingClassifier(max_iter=200, max_leaf_nodes=15, random_state=0).fit(
        tr.features[valid], y[valid]
    )


def hgb_risk(hgb: Any, tr: Traces) -> np.ndarray:
    s, n, f = tr.features.shape
    return np.asarray(hgb.predict_proba(tr.features.reshape(s * n, f))[:, 1]).reshape(s, n)


def evaluate(
    tr: Traces, rows: list[tuple[str, np.ndarray, float]], horizon_s: float
) -> dict[str, dict[str, Any]]:
    """Event metrics and the threshold-free average precision over samples of each
    ``(name, risk, threshold)``."""
    from sklearn.metrics import average_precision_score

    y, valid = tr.labels(horizon_s)
    out: dict[str, dict[str, Any]] = {}
    for name, risk, thr in rows:
        row = event_metrics(risk, tr.t_s, tr.fail_s, thr, horizon_s).row()
        row["average_precision"] = round(float(average_precision_score(y[valid], risk[valid])), 4)
        out[name] = row
    return out


def check_rows(model: FailureModel, tr: Traces) -> list[tuple[str, np.ndarray, float]]:
    """The rows recorded for :data:`.failure_traces.TEST_SMALL` (the fast reproduction test)."""
    both = np.maximum(tr.fatal, model_risk(model, tr))
    return [("rules", tr.rules, OPERATING), ("max(fatal rules, model)", both, OPERATING)]


def train(
    out: Path,
    *,
    train_spec: TraceSpec = TRAIN,
    test_spec: TraceSpec = TEST,
    check_spec: TraceSpec = TEST_SMALL,
    horizon_s: float = HORIZON_S,
    reference: bool = True,
) -> dict[str, Any]:
    """Simulate, fit, measure, write ``out``; return the record.

    The shipped model acts at :data:`OPERATING` (the failure-risk alert threshold). Thresholds
    chosen on the training traces (best event F1) are reported next to it, never on test data.
    """
    t0 = time.perf_counter()
    tr = run_traces(train_spec)
    t_sim = time.perf_counter() - t0
    model = fit(tr, horizon_s)
    t_fit = time.perf_counter() - t0 - t_sim
    m_tr = model_risk(model, tr)
    best_both = best_threshold(np.maximum(tr.fatal, m_tr), tr, horizon_s)
    best_rules = best_threshold(tr.rules, tr, horizon_s)
    hgb = hgb_reference(tr, horizon_s) if reference else None
    best_hgb = None
    if hgb is not None:
        best_hgb = best_threshold(np.maximum(tr.fatal, hgb_risk(hgb, tr)), tr, horizon_s)
    t1 = time.perf_counter()
    te = run_traces(test_spec)
    t_sim_test = time.perf_counter() - t1
    m_te = model_risk(model, te)
    both = np.maximum(te.fatal, m_te)
    op = OPERATING
    rows = [
        (f"rules @{op:g} (alert threshold)", te.rules, op),
        (f"rules @{best_rules.threshold:g} (best on train)", te.rules, best_rules.threshold),
        (f"max(all rules, model) @{op:g}", np.maximum(te.rules, m_te), op),
        (f"**max(fatal rules, model) @{op:g} (shipped)**", both, op),
        (
            f"max(fatal rules, model) @{best_both.threshold:g} (best on train)",
            both,
            best_both.threshold,
        ),
    ]
    if hgb is not None and best_hgb is not None:
        rows.append((
            f"max(fatal rules, HGB trees) @{best_hgb.threshold:g} (best on train; reference, "
            "not shipped)", np.maximum(te.fatal, hgb_risk(hgb, te)), best_hgb.threshold,
        ))  # fmt: skip
    held_out = evaluate(te, rows, horizon_s)
    train_rows = evaluate(
        tr,
        [(n, r, t) for n, r, t in (
            (f"rules @{op:g}", tr.rules, op),
            (f"max(fatal rules, model) @{op:g}", np.maximum(tr.fatal, m_tr), op),
        )],
        horizon_s,
    )  # fmt: skip
    record: dict[str, Any] = {
        "horizon_s": horizon_s,
        "operating_threshold": op,
        "train": {
            "seeds": [min(train_spec.seeds), max(train_spec.seeds)],
            "traces": len(train_spec.seeds),
            "duration_s": train_spec.duration_s,
            "n_devices": train_spec.n_devices or "3-8",
            "devices": int(tr.features.shape[1]),
            "failures": int(np.isfinite(tr.fail_s).sum()),
            "metrics": train_rows,
        },
        "test": {
            "seeds": [min(test_spec.seeds), max(test_spec.seeds)],
            "traces": len(test_spec.seeds),
            "duration_s": test_spec.duration_s,
            "n_devices": test_spec.n_devices,
            "devices": int(te.features.shape[1]),
            "failures": int(np.isfinite(te.fail_s).sum()),
        },
        "held_out": held_out,
        "coef": dict(zip(FEATURES, np.round(model.coef, 4).tolist(), strict=True)),
        "seconds": {
            "simulate_train": round(t_sim, 1),
            "fit": round(t_fit, 1),
            "simulate_test": round(t_sim_test, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    small = run_traces(check_spec)
    record["check"] = {
        "seeds": list(check_spec.seeds),
        "metrics": evaluate(small, check_rows(model, small), horizon_s),
    }
    record["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    final = FailureModel(
        mean=model.mean, scale=model.scale, coef=model.coef, intercept=model.intercept,
        horizon_s=horizon_s, threshold=op, floor=model.floor, record=record,
    )  # fmt: skip
    final.save(out)
    return record


def markdown_table(held_out: dict[str, dict[str, Any]]) -> str:
    """The held-out metrics as a Markdown table."""
    head = ("| risk | precision | recall | F1 | lead median (min) | lead p10 (min) | "
            "false alarms / device-day | avg. precision |")  # fmt: skip
    lines = [head, "|" + "---|" * 8]
    for name, r in held_out.items():
        lines.append(
            f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
            f"{r['lead_median_s'] / 60:.1f} | {r['lead_p10_s'] / 60:.1f} | "
            f"{r['false_alarms_per_device_day']:.2f} | {r['average_precision']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SHIPPED_PATH, help="model JSON to write")
    args = ap.parse_args(argv)
    record = train(args.out)
    print(json.dumps(record, indent=1))
    print(markdown_table(record["held_out"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
