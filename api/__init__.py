"""The HTTP face of Everlook: ``create_app(services)`` (FastAPI)."""

from api.app import create_app
from api.services import ApiConfig, Services

__all__ = ["ApiConfig", "Services", "create_app"]
