"""The types every training setting is checked with (pydantic): strict, so "2" or true is no integer."""

from typing import Annotated

from pydantic import ConfigDict, Field

STRICT = ConfigDict(strict=True, extra="forbid")  # unknown names refused too
Count = Annotated[int, Field(ge=1)]  # epochs, rows, levels, experts, units
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Rate = Annotated[float, Field(ge=0, lt=1)]  # a dropout probability
Sizes = Annotated[tuple[Count, ...], Field(min_length=1)]  # hidden layer widths (TOML lists become tuples)
