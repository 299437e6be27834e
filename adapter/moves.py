"""MVXL and MVCL, the two named move operations (Fig 10).

MVXL moves `count` bytes between *physical* addresses of the segment: privileged, used by the
adapter (Fig 11 step 1105) and by a driver holding a granted lock (Fig 12 step 1204).
MVCL does the same between a partition's own *virtual* addresses (offsets in its region).
Both check the ranges with explicit integer arithmetic first (Invariant 2): a memoryview slice
would clamp an out-of-range end silently.
"""

from __future__ import annotations

from adapter.errors import BadCount, BadOffset, OutOfBounds


def check_range(offset: int, count: int, size: int, what: str) -> None:
    """Raise unless [offset, offset + count) lies inside [0, size)."""
    if count <= 0:
        raise BadCount(f"{what}: count {count} must be > 0")
    if offset < 0:
        raise BadOffset(f"{what}: offset {offset} must be >= 0")
    if offset + count > size:
        raise OutOfBounds(f"{what}: range [{offset}, {offset + count}) exceeds size {size}")


def _move(memory: memoryview, destination: int, source: int, count: int, kind: str) -> None:
    size = len(memory)
    if not (count > 0 and source >= 0 and destination >= 0 and source + count <= size
            and destination + count <= size):  # one guard on the hot path; then name the fault
        check_range(source, count, size, f"{kind} source")
        check_range(destination, count, size, f"{kind} destination")
    memory[destination:destination + count] = memory[source:source + count]


def mvxl(physical: memoryview, destination: int, source: int, count: int) -> None:
    """Privileged move between physical addresses of the whole segment (one memcpy)."""
    _move(physical, destination, source, count, "MVXL")


def mvcl(region: memoryview, destination: int, source: int, count: int) -> None:
    """Move between two virtual addresses of one partition's own region."""
    _move(region, destination, source, count, "MVCL")
