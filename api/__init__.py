"""An asyncio OpenAI-compatible server over the engine (`python -m api --model PATH`, or `triton-serve`).

`create_app(AsyncLLM(...), ServerSettings("name"))` builds the FastAPI app; `api.cli` runs it with uvicorn.
Both names are imported on first use, so that the command line answers `--help` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.server import create_app
    from api.state import ServerSettings

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api.server import create_app
        return create_app
    if name == "ServerSettings":
        from api.state import ServerSettings
        return ServerSettings
    raise AttributeError(f"module 'api' has no attribute {name!r}")
