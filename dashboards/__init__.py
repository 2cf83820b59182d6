"""Grafana dashboards and alert rules as code, alert subscriptions (issue #7; not built yet)."""
