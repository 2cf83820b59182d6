"""The operator's web console: a FastAPI JSON API and one static page (docs/console.md)."""
