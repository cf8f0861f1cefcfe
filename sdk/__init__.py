"""The agent SDK (distribution ``grpod-sdk``): record traces and rewards, fetch the library.

Light by design: it imports kombu and pydantic, never Celery, torch, llama.cpp,
sentence-transformers or worker code, and it needs no database (the library cache's
database path is the extra ``grpod-sdk[postgres]``). Events are validated here first (a bad event raises
``InvalidEventError`` at once, in the agent), then published with broker
confirms; if the broker cannot be reached within the retry budget,
``PublishError`` is raised: the agent is never blocked for long and an
event is never dropped silently.

    from grpod.sdk import Client

    with Client() as grpod:  # GRPOD_BROKER_URL, or the embedded spool
        trace_id = grpod.record_trace(
            domain="support",
            query="How do I rotate my API key?",
            trajectory=[{"role": "user", "content": "How do I rotate my API key?"},
                        {"role": "assistant", "content": "Settings > API keys > Rotate."}],
            answer="Settings > API keys > Rotate.",
            library_version=7,
        )
        grpod.record_reward(trace_id, 1.0, source="user_thumbs")

The learned library goes into the agent's prompt; the trace then names its version, so each
version gets a reward record (over the database, with the ``postgres`` extra):

    from grpod.sdk import LibraryCache

    libraries = LibraryCache(database_url)  # cached; refreshed when a label moves (LISTEN/NOTIFY)
    library = libraries.get("support")       # version 0 and no experiences before anything is learned
    system_prompt = BASE_PROMPT + "\n\n" + library.prompt
    ... grpod.record_trace(domain="support", ..., library_version=library.version)
"""

from grpod.schema.library import Experience, Library
from grpod.sdk.client import Client, InvalidEventError, ValidEvent, new_trace_id
from grpod.sdk.http_library import HttpLibraryCache
from grpod.sdk.library_cache import LibraryCache, LibraryUnavailableError
from grpod.sdk.publish import PublishError
from grpod.sdk.settings import ClientSettings

__all__ = [
    "Client",
    "ClientSettings",
    "Experience",
    "HttpLibraryCache",
    "InvalidEventError",
    "Library",
    "LibraryCache",
    "LibraryUnavailableError",
    "PublishError",
    "ValidEvent",
    "new_trace_id",
]
