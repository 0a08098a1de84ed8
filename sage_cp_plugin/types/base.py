"""The base of every public model."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
)


class StrictModel(BaseModel):
    """Unknown fields are refused and assignments validated: bad input fails at the boundary."""

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_enum_values=False,
        arbitrary_types_allowed=False,
    )
