"""Which Prefect API the record goes to.

``$PREFECT_API_URL`` when it is set (then nepi-prefect starts nothing); else the
local server of this ``PREFECT_HOME`` (:mod:`.local_server`), started on first
use. There is no per-process ephemeral API any more: a record must outlive its
process and be watchable while the experiment runs.
"""

from __future__ import annotations

from nepi_prefect import settings
from nepi_prefect.orchestration import local_server


def api_url() -> str:
    """The API URL to record into, starting the local server if that is the target."""
    return settings.prefect_api_url() or local_server.ensure().api_url


def use_api() -> str:
    """Point this process (and the Prefect code it runs, and its children) at the API.

    For code that runs Prefect flows itself (``nepi-prefect sweep``): call it before
    importing Prefect, so Prefect does not start its own ephemeral server.
    """
    url = api_url()
    settings.export_prefect_api_url(url)
    return url


def ui_url(api: str) -> str:
    """The UI's address for an API URL (``$PREFECT_UI_URL`` if set)."""
    explicit = settings.prefect_ui_url()
    if explicit:
        return explicit.rstrip("/")
    return api.rstrip("/").removesuffix("/api")
