"""`NamedTuple` for the modules `teiten replay` imports before its first frame, without the
`typing` module.

Importing `typing` took 4-7 ms of that start-up here (Python 3.11: it builds hundreds of
aliases and special forms), and those modules need nothing else of it at run time.  Their
other names from typing are only in annotations, which `from __future__ import
annotations` leaves unevaluated: they are imported under `if TYPE_CHECKING:`, with the
module's own `TYPE_CHECKING = False` (mypy reads any name so called as true).

Type checkers see `typing.NamedTuple` itself.  At run time the class statement gets what
typing makes: a subclass of `collections.namedtuple` with the annotated fields, their
defaults and the body's methods.  tests/unit/test_tuples.py holds the two to the same behaviour.
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    from collections import namedtuple as _namedtuple

    # What a class body always has, which is not a field or a method to copy.
    _NOT_COPIED = frozenset({"__module__", "__qualname__", "__annotations__"})
    # What typing.NamedTuple refuses to let a body redefine: it would break the tuple.
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields",
                             "_field_defaults", "_make", "_replace", "_asdict", "_source"})

    class _NamedTupleMeta(type):
        def __new__(mcs, name, bases, body):
            fields = tuple(body.get("__annotations__", {}))
            defaults = [body[f] for f in fields if f in body]
            if any(f in body for f in fields[: len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = _namedtuple(name, fields, defaults=defaults, module=body.get("__module__"))
            for key, value in body.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"{name}: cannot overwrite NamedTuple attribute {key}")
                if key not in _NOT_COPIED and key not in fields:
                    setattr(cls, key, value)
            cls.__qualname__ = body.get("__qualname__", name)
            cls.__annotations__ = dict(body.get("__annotations__", {}))
            return cls

    _BASE = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})

    def NamedTuple(*args, **kwargs):
        raise TypeError("NamedTuple: use it as a base class (class Name(NamedTuple): ...)")

    # As typing does: a class statement naming NamedTuple gets _BASE, whose metaclass makes
    # the tuple (PEP 560).
    NamedTuple.__mro_entries__ = lambda bases: (_BASE,)
