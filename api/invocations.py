"""POST /invocations, SageMaker's inference route (as vLLM serves it): a body with `messages` is a chat completion,
any other a completion, answered by those routes' own handlers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from pydantic import Discriminator, Tag

from api import chat, completions
from api.protocol import ChatCompletionRequest, CompletionRequest
from api.responses import ChatCompletionChunk, ChatCompletionResponse, CompletionResponse, generation_responses

router = APIRouter()


def _kind(value: Any) -> str | None:
    """A chat completion where the body has `messages`, else a completion (whose errors then name `prompt`); None
    for a body that is no JSON object (a 400 saying so)."""
    if not isinstance(value, dict):
        return None
    return "chat" if "messages" in value else "completion"


Invocation = Annotated[Annotated[ChatCompletionRequest, Tag("chat")] | Annotated[CompletionRequest, Tag("completion")],
                       Discriminator(_kind)]


@router.post("/invocations", response_model=None,
             responses=generation_responses(ChatCompletionResponse | CompletionResponse, ChatCompletionChunk,
                                            CompletionResponse))
async def invocations(body: Annotated[Invocation, Body()], request: Request) -> Response:
    """A chat completion or a completion, by the body (streamed as server-sent events with `stream: true`)."""
    if isinstance(body, ChatCompletionRequest):
        return await chat.create_chat_completion(body, request)
    return await completions.create_completion(body, request)
