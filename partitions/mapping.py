"""What a partition process maps and opens: no more than its role needs (the threat model).

The driver and the receiver address the segment by its global offsets (the adapter's physical
addresses), so the process maps the segment once and then makes every page it does not need
inaccessible (mprotect PROT_NONE): the other partitions' private memory, `[base, receive_base)`
of each, their send space. A read or write there through any view of the mapping is SIGSEGV.
What stays readable and writable, and why:

* the control area: the ring control blocks (the Fig 12 driver publishes `head` and its
  `released` proof in its destinations', reads their `sleeping` to ring; the receiver writes
  `tail` and `sleeping` in its own) and the per-pair words (the driver reads its pairs'
  sequence words to resolve a move in doubt; the receiver reads its pairs' and writes their
  delivered words). One or two pages shared by every partition: a page is the finest grain;
* its own region, send space and receive area;
* the other partitions' receive areas: a Fig 12 driver moves into them with a granted lock.

Semaphores: the locks of its destinations (every other partition: the Fig 12 driver posts the
lock it was granted) and their doorbells, and its own doorbell (its receiver sleeps on it);
its own recall semaphore (its leases); the room semaphores of the partitions on its host (its
own, posted by its receiver; its destinations', its senders wait on them). Not its own lock:
no partition moves to itself.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterable

from hypervisor.layout import SegmentLayout

PROT_NONE = 0


def hidden_ranges(layout: SegmentLayout, network_id: int,
                  page_size: int = mmap.PAGESIZE) -> list[tuple[int, int]]:
    """[start, end) segment ranges partition `network_id` never needs: every other partition's
    private memory, shrunk to whole pages of `page_size` (what mprotect can hide; the layout
    aligns regions to 4 KiB, so on larger pages a partial page at an edge stays mapped)."""
    ranges = []
    for p in layout.partitions:
        if p.network_id == network_id:
            continue
        start = -(-p.base // page_size) * page_size
        end = p.receive_base // page_size * page_size
        if start < end:
            ranges.append((start, end))
    return ranges


def semaphores_needed(network_id: int, ids: Iterable[int]) -> tuple[list[int], list[int]]:
    """(network IDs whose lock, network IDs whose doorbell) partition `network_id` opens."""
    ids = list(ids)
    return [i for i in ids if i != network_id], ids


def hide(segment: memoryview, ranges: Iterable[tuple[int, int]]) -> None:
    """Make `ranges` of the mapping behind `segment` inaccessible (PROT_NONE); OSError naming
    the range if the kernel refuses. `segment` must start at the mapping's first byte."""
    anchor = ctypes.c_char.from_buffer(segment)  # released on return: close() can unmap
    base = ctypes.addressof(anchor)
    del anchor
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, end in ranges:
        if not 0 <= start < end <= len(segment):
            raise ValueError(f"range [{start}, {end}) is outside the segment of "
                             f"{len(segment)} bytes")
        if libc.mprotect(base + start, end - start, PROT_NONE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mprotect [{start}, {end}) of the segment to PROT_NONE")
