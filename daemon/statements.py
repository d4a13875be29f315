"""SQL with named parameters, turned into asyncpg's numbered ones.

A statement names its parameters, `:school_id`, and the caller passes a mapping of
name to value; the `$N` numbers are generated from the names, so a value can never
land in another parameter's position, however the statement's fragments are composed.
A cast (`::jsonb`) is not a parameter. Every name the statement uses must be given,
and every value given must be used: a typo either way fails at once, not in the data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# `:name`, but not the second half of a `::type` cast nor a `word:name` inside a literal.
_NAME = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


class Statement:
    """One SQL statement whose `:name` parameters are bound by name."""

    def __init__(self, sql: str) -> None:
        self.names: tuple[str, ...] = tuple(dict.fromkeys(_NAME.findall(sql)))
        numbers = {name: f"${n}" for n, name in enumerate(self.names, start=1)}
        self.sql = _NAME.sub(lambda match: numbers[match.group(1)], sql)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The values of `params` in the order of the statement's `$N`."""
        if params.keys() != set(self.names):
            missing = sorted(set(self.names) - params.keys())
            unused = sorted(params.keys() - set(self.names))
            raise ValueError(f"Statement parameters: missing {missing}, unused {unused}.")
        return [params[name] for name in self.names]
