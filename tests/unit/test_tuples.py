"""sensor.core.tuples.NamedTuple makes at run time what typing.NamedTuple makes: the same
tuple class, fields, defaults, methods and errors, so that the modules on the way to
`teiten replay`'s first frame can use it without importing typing."""

from __future__ import annotations

import pickle
import typing

import pytest

from sensor.core import tuples
from sensor.core.limits import Limits


def _pair(base: typing.Any) -> type:
    class Pair(base):  # type: ignore[misc,valid-type]
        """A pair."""

        x: int
        y: int = 3

        def total(self) -> int:
            return int(self.x + self.y)

    return Pair


OURS = _pair(tuples.NamedTuple)
TYPING = _pair(typing.NamedTuple)


@pytest.mark.parametrize("cls", [OURS, TYPING], ids=["ours", "typing"])
def test_the_class_is_the_same_kind_of_tuple(cls: typing.Any) -> None:
    pair = cls(1)
    assert pair == (1, 3) and hash(pair) == hash((1, 3))
    assert pair.total() == 4 and pair.x == 1 and pair.y == 3
    assert cls._fields == ("x", "y") and cls._field_defaults == {"y": 3}
    assert cls.__doc__ == "A pair." and cls.__name__ == "Pair"
    assert cls.__qualname__ == "_pair.<locals>.Pair" and cls.__module__ == __name__
    assert pair._replace(y=5) == (1, 5) and pair._asdict() == {"x": 1, "y": 3}
    assert cls.__mro__[1:] == (tuple, object)
    assert list(cls.__annotations__) == ["x", "y"]
    assert repr(pair) == "Pair(x=1, y=3)"
    with pytest.raises(TypeError):
        cls()
    with pytest.raises(AttributeError):
        pair.x = 2


@pytest.mark.parametrize("base", [tuples.NamedTuple, typing.NamedTuple], ids=["ours", "typing"])
def test_the_same_mistakes_are_refused(base: typing.Any) -> None:
    with pytest.raises(TypeError):
        class Bad(base):  # type: ignore[misc,valid-type]
            x: int = 1
            y: int

    with pytest.raises(AttributeError):
        class Worse(base):  # type: ignore[misc,valid-type]
            x: int

            def _replace(self) -> None: ...


def test_only_the_class_statement_is_offered() -> None:
    """typing's call form (`NamedTuple("Name", [...])`) is not: no module here uses it."""
    with pytest.raises(TypeError, match="use it as a base class"):
        tuples.NamedTuple("Name", [("x", int)])


def test_limits_is_a_tuple_that_pickles_and_compares() -> None:
    limits = Limits(max_sources=10)
    assert pickle.loads(pickle.dumps(limits)) == limits
    assert limits._replace(max_sources=11).max_sources == 11
    assert Limits() == Limits() and Limits() != limits
