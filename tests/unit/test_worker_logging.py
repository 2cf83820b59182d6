"""The worker honours its log level: faust's terminal spinner would set the root logger to
DEBUG at ``-l warning`` and above (streams/app.py ``make_worker``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from accelpilot.config import load_settings
from accelpilot.streams.app import make_app, make_worker


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


@pytest.mark.parametrize("level", ["warning", "error", "info"])
def test_the_root_logger_is_at_the_level_asked_for(
    level: str, tmp_path: Path, root_logging: None
) -> None:
    settings = load_settings()
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"data_dir": tmp_path})}
    )
    worker = make_worker(make_app(settings), loglevel=level)
    worker.redirect_stdouts = False  # (the worker would send print() to the log; not here)
    worker._setup_logging()  # what the worker does on its first start
    root = logging.getLogger()
    assert root.level == logging.getLevelName(level.upper())
    assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
    assert all(h.level >= root.level for h in root.handlers)
