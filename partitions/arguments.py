"""The numbers a program hands the Port, checked before they reach a request.

A request packs network IDs, offsets and counts as integers. A value that only looks like
one (2.0, True, "2") would pass a dict lookup (2.0 == 2 and True == 1 hash alike) and then
fail inside the driver, or inside the submission queue's own thread, where no caller hears
of it. So every value is taken through `operator.index` (ints and numpy integers pass) and a
bool is refused, each with a typed error naming the value.
"""

from __future__ import annotations

import operator

from adapter.errors import BadCount, UnknownNetworkId


def network_id(value: object, what: str) -> int:
    """`value` as a destination network ID; UnknownNetworkId naming it if it is no integer."""
    number = _integer(value)
    if number is None:
        raise UnknownNetworkId(f"{what}: destination network ID {value!r} is not an integer")
    return number


def whole(value: object, what: str, name: str) -> int:
    """`value` as a byte count, offset or packet count; BadCount naming it otherwise."""
    number = _integer(value)
    if number is None:
        raise BadCount(f"{what}: {name} {value!r} is not an integer")
    return number


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
