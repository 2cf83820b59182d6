"""Detectors by name: what ``--detector NAME`` and the NAB runner accept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accelpilot.detectors.base import BatchDetector

Factory = Callable[..., BatchDetector]


def _factories() -> dict[str, Factory]:
    # Imported here so that `import accelpilot.detectors` stays cheap (torch loads lazily).
    from accelpilot.detectors.covariance import LagCovariance
    from accelpilot.detectors.ensemble import Ensemble
    from accelpilot.detectors.forecaster import TorchForecaster
    from accelpilot.detectors.gaps import MonitoringGaps
    from accelpilot.detectors.novelty import NoveltyEpisodes
    from accelpilot.detectors.peers import PeerGroup
    from accelpilot.detectors.robust import RobustZ

    return {
        RobustZ.name: RobustZ,
        LagCovariance.name: LagCovariance,
        TorchForecaster.name: TorchForecaster,
        PeerGroup.name: PeerGroup,
        MonitoringGaps.name: MonitoringGaps,
        Ensemble.name: Ensemble,
        NoveltyEpisodes.name: NoveltyEpisodes,
    }


#: The detector `detect csv` and the fleet use when none is named (fast: `bench detectors`).
DEFAULT_DETECTOR = "ensemble"
#: The detector `detect nab` and the NAB runner use when none is named (docs/detectors.md):
#: the sparse novelty detector, best of the registered ones on NAB.
NAB_DETECTOR = "novelty"


def detector_names() -> list[str]:
    """Every registered detector name, sorted."""
    return sorted(_factories())


def make_detector(name: str, n_series: int, **kwargs: Any) -> BatchDetector:
    """A fresh detector ``name`` for ``n_series`` series (keyword arguments go to it).

    Raises:
        KeyError: ``name`` is not registered (the message lists the names that are).
    """
    factories = _factories()
    if name not in factories:
        raise KeyError(f"unknown detector {name!r}; choose one of {sorted(factories)}")
    return factories[name](n_series, **kwargs)
