"""Host-side collection: device backends, sampling and publishing to ``telemetry.samples``."""
