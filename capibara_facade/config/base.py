"""What every config section shares: frozen, strict about unknown keys, and the constrained number types."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Base", "Port", "PositiveFloat", "PositiveInt"]

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class Base(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Policy for every config section: immutable, and a misspelt key is an error, not a silent default."""
