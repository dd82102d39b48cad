"""Staff and operator HTTP JSON API (Litestar): schools, pupils, cards, controls, money, staff, audit.

See docs/staff-api.md. ``create_app(dsn)`` builds the application; ``python -m
staff_api serve`` runs it under uvicorn; ``python -m staff_api.cli`` is a thin
command-line client over HTTP.
"""

from .app import create_app

__all__ = ["create_app"]
