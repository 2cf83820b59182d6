"""Anomaly detection and failure prediction over batches of devices (issue #5; not built yet)."""
