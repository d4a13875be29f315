"""The base of every configuration section: one TOML table, closed and frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A section of the configuration: unknown keys refused, values frozen, and no
    value repeated in a validation error (it may be a secret)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
