"""LangChain's ChatOpenAI against the server, as an agent framework's user would point it at us."""

from __future__ import annotations

import jsonschema
import pytest
from api_helpers import TIMEOUT

langchain_openai = pytest.importorskip("langchain_openai")
pydantic = pytest.importorskip("pydantic")


class Person(pydantic.BaseModel):
    """A person."""

    name: str = pydantic.Field(max_length=12)
    age: int = pydantic.Field(ge=0, le=150)


def _chat(server) -> langchain_openai.ChatOpenAI:
    return langchain_openai.ChatOpenAI(model=server.model, base_url=f"{server.url}/v1", api_key=server.api_key,
                                       max_tokens=80, temperature=1.0, seed=3, timeout=TIMEOUT, max_retries=0)


def test_with_structured_output_returns_a_valid_object(server):
    """LangChain's default for ChatOpenAI is OpenAI's json_schema response_format."""
    structured = _chat(server).with_structured_output(Person, method="json_schema", include_raw=True)
    result = structured.invoke("Describe someone.")
    assert result["parsing_error"] is None
    person = result["parsed"]
    assert isinstance(person, Person)
    jsonschema.validate(person.model_dump(), Person.model_json_schema())


def test_bound_strict_tools_are_called_validly(server):
    """bind_tools(strict=True) with a forced tool, as LangChain sends it: a valid call, ending with "stop"."""
    bound = _chat(server).bind_tools([Person], tool_choice="Person", strict=True)
    message = bound.invoke("Describe someone.")
    (call,) = message.tool_calls
    assert call["name"] == "Person" and message.response_metadata["finish_reason"] == "stop"
    jsonschema.validate(call["args"], Person.model_json_schema())
