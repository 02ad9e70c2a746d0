"""The base of every request model: strict types and no unknown fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """No type coercion ("2" is not 2) and no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")
