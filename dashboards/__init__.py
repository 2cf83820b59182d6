"""Grafana dashboards and alert rules as code (issue #7), and alert subscriptions."""
