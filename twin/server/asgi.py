"""The ASGI entry point for ``uvicorn twin.server.asgi:app`` (worker processes build it from TWIN_*)."""

from twin.server.app import create_app
from twin.server.settings import Settings

app = create_app(Settings.from_env())
