"""An asyncio OpenAI-compatible server over the engine (`python -m api --model PATH`).

`create_app(AsyncLLM(...), ServerSettings("name"))` builds the FastAPI app; `api.__main__` runs it with uvicorn.
"""

from api.server import create_app
from api.state import ServerSettings

__all__ = ["ServerSettings", "create_app"]
