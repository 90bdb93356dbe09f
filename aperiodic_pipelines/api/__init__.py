"""The delivery API: REST over the published store, as the `aperiodic` client speaks it (spec §5).

Knows the store, its key layout and index, and the symbology; nothing of Dagster. `create_app` builds the
ASGI application; `serve` runs it with uvicorn; `running_server` runs it in a thread for a moment.
"""

from aperiodic_pipelines.api.app import create_app
from aperiodic_pipelines.api.keys import DEMO_KEY, ApiKeyStore
from aperiodic_pipelines.api.server import running_server, serve
from aperiodic_pipelines.api.settings import ApiSettings, PreviewMonth

__all__ = ["DEMO_KEY", "ApiKeyStore", "ApiSettings", "PreviewMonth", "create_app", "running_server", "serve"]
