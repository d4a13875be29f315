import re

import pytest

from daemon.statements import Statement


def test_names_become_numbers_in_order_of_first_use_and_repeat_as_the_same_number() -> None:
    statement = Statement(
        "UPDATE t SET n = :n, sha = :sha WHERE id = :id AND n = :n - 1 AND sha <> :sha"
    )
    assert (
        statement.sql == "UPDATE t SET n = $1, sha = $2 WHERE id = $3 AND n = $1 - 1 AND sha <> $2"
    )
    assert statement.args({"id": 7, "sha": "ab", "n": 2}) == [2, "ab", 7]


def test_casts_are_not_parameters() -> None:
    statement = Statement("SELECT :detail::jsonb, 0::smallint, (x)::text, a::int FROM t")
    assert statement.sql == "SELECT $1::jsonb, 0::smallint, (x)::text, a::int FROM t"
    assert statement.names == ("detail",)


def test_fragments_composed_in_any_order_keep_each_value_with_its_name() -> None:
    head = "WITH changed AS (UPDATE r SET state = :state WHERE id = :id RETURNING id)"
    tail = " INSERT INTO log (id, state, detail) SELECT :id, :state, :detail::jsonb FROM changed"
    params = {"detail": "{}", "id": 1, "state": "signed"}
    for sql in (head + tail, tail + "; " + head, tail.replace(":id, :state", ":state, :id")):
        statement = Statement(sql)
        args = statement.args(params)
        by_number = re.sub(
            r"\$(\d+)", lambda m, args=args: repr(args[int(m.group(1)) - 1]), statement.sql
        )
        by_name = sql
        for name, value in params.items():
            by_name = by_name.replace(f":{name}", repr(value))
        assert by_number == by_name


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"a": 1}, "missing ['b']"),
        ({"a": 1, "b": 2, "c": 3}, "unused ['c']"),
        ({"a": 1, "bb": 2}, "missing ['b'], unused ['bb']"),
    ],
)
def test_a_missing_or_unused_value_fails_at_once(params: dict[str, int], words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Statement("SELECT :a, :b").args(params)
