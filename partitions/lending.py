"""The driver's half of a zero-copy loan (partitions/loan.py): a Fig 12 grant taken now and
finished later.

`Lending` is a part of `Driver` (partitions/driver.py), kept apart because it is one idea: the
adapter's GRANT (or GRANT_RUN) exactly as a Fig 12 send asks for it, but no MVXL; the program
writes the payload in place, then `end_grant` does Fig 12's last steps (publish the head, the
holder's proof, the post of the lock, the doorbell), or gives the space back. No protocol
change: the adapter cannot tell a loan from a slow Fig 12 move.

Between `take_grant` and `end_grant` the driver's request slot (its mutex) stays taken: a
driver holding a grant sends no other request, because a restarted adapter takes a holder's
next request as proof that it is not mid-move and takes the grant back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from adapter import receive_area
from adapter.errors import LockTimeout, RingCorrupt, Status, XpmoveError, error_for
from adapter.protocol import Move, Op
from adapter.ring import RUN_DESCRIPTOR
from partitions.driver_parts import DriverParts

LOAN_WAIT_S = 0.05  # how long one try of a loan waits for the driver (another thread's loan)


class Granted(NamedTuple):
    """A Fig 12 grant the driver holds for a loan (partitions/loan.py): the program writes the
    `size` bytes at physical `address` (the record's payload; for a run, its packets past the
    descriptor the adapter wrote), then the driver commits `head` or gives the space back."""

    dst_id: int
    seq: int  # of the first record
    count: int  # type: ignore[assignment]  # bytes of the move asked for (Sent.count)
    records: int
    address: int
    size: int
    head: int  # the commit value
    token: int  # the grant's token: the grant is still ours while the control block holds it


class Lending(DriverParts):
    """Driver's methods for loans; the methods below come from Driver."""

    if TYPE_CHECKING:
        def _free_grant(self, dst: int, committed: bool) -> None: ...

    def _take_slot(self, wait: float) -> LockTimeout | None:
        """Take the driver's one request slot (its mutex) within `wait` seconds (negative: no
        limit): another thread of this partition may be sending or holding a loan. None when
        taken (the caller releases it), else the LockTimeout to report (nothing was sent)."""
        if self._mutex.acquire(blocking=False) or self._mutex.acquire(timeout=wait):
            return None
        return LockTimeout(f"network ID {self.network_id}'s driver stayed busy for {wait:.3g} s "
                           f"(another of its threads holds a loan or is sending); nothing "
                           f"was sent")

    def take_grant(self, dst_id: int, offset: int, count: int, run: bool = False,
                   wait: float = LOAN_WAIT_S, reply_by: float | None = None
                   ) -> Granted | XpmoveError:
        """Fig 12 up to the grant, for a loan: the adapter translates, locks, reserves and
        returns the destination's payload address; the driver moves nothing. Returned with
        the driver's request slot (its mutex) still taken: a driver that holds a grant sends
        no other request until `end_grant` (a restarted adapter takes a holder's next request
        as proof that it is not mid-move, and takes the grant back). The granted space is
        zeroed before the program sees it: it held other partitions' records.

        `offset`, `count` name a range of own memory as for any move (for a run, the adapter
        reads the descriptor at `offset`). LockTimeout if another loan of this partition keeps
        the driver busy for `wait` seconds; `reply_by` as for send_one. Errors are returned,
        not raised.
        """
        return self._take(dst_id, offset, count, run, wait, reply_by, zero=True)

    def take_grant_uninit(self, dst_id: int, offset: int, count: int, run: bool = False,
                          wait: float = LOAN_WAIT_S, reply_by: float | None = None
                          ) -> Granted | XpmoveError:
        """`take_grant` for a program that writes every byte it commits (numpy's `empty`,
        iceoryx2's `loan_uninit`): the memset is skipped when the destination's ring has only
        ever held this partition's records (its `writer` word, which the adapter notes before
        it writes a byte there), since then the space holds nothing but our own old bytes.
        Any other ring's space is zeroed as `take_grant` does: isolation never depends on
        what the program writes."""
        return self._take(dst_id, offset, count, run, wait, reply_by, zero=False)

    def take_grant_to_fill(self, dst_id: int, offset: int, count: int, run: bool = False,
                           wait: float = LOAN_WAIT_S, reply_by: float | None = None
                           ) -> Granted | XpmoveError:
        """`take_grant` for trusted code that copies exactly the granted bytes in before
        anything else reads them: the cluster's fabric committing a record that landed from
        another host (cluster/fabric.py). Never zeroed: every byte is overwritten at once."""
        return self._take(dst_id, offset, count, run, wait, reply_by, zero=False, fill=True)

    def _take(self, dst_id: int, offset: int, count: int, run: bool, wait: float,
              reply_by: float | None, zero: bool, fill: bool = False
              ) -> Granted | XpmoveError:
        busy = self._take_slot(wait)
        if busy is not None:
            return busy
        try:
            outcome = self._grant(dst_id, offset, count, run, reply_by, zero, fill)
        except BaseException:
            self._mutex.release()
            raise
        if isinstance(outcome, XpmoveError):
            self._mutex.release()
        return outcome

    def _grant(self, dst_id: int, offset: int, count: int, run: bool,
               reply_by: float | None, zero: bool, fill: bool = False
               ) -> Granted | XpmoveError:
        """The request of `take_grant`, mutex held: the error, or the grant, checked and
        zeroed (unless `zero` is false and the space can only hold our own bytes)."""
        op = Op.GRANT_RUN if run else Op.GRANT
        try:
            (r,) = self._survive_restart(op, (Move(self.network_id, dst_id, offset, count),),
                                         reply_by)
        except XpmoveError as exc:
            return exc
        if r.status != Status.OK:
            return error_for(r.status, src_id=self.network_id, dst_id=dst_id, offset=offset,
                             count=count, detail=r.detail)
        dst = self.by_id[dst_id]
        end = dst.receive_base + dst.receive_size
        size = count - RUN_DESCRIPTOR.size if run else count
        if not (dst.receive_base <= r.dst_address and r.dst_address + r.count <= end
                and r.count == size):
            self._free_grant(dst_id, committed=False)  # never hand out what is not the record
            return RingCorrupt(f"grant of [{r.dst_address}, {r.dst_address + r.count}) for a "
                               f"move of {count} bytes is not a record inside network ID "
                               f"{dst_id}'s receive area [{dst.receive_base}, {end})")
        ring = self.rings[dst_id]
        if not fill and (zero or not receive_area.only_written_by(self.words, ring,
                                                                   self.network_id)):
            np.frombuffer(self.physical, np.uint8, size, r.dst_address).fill(0)  # a memset
        token = self.words[ring.token]  # the adapter stored it before replying
        return Granted(dst_id, r.seq, count, r.detail if run else 1, r.dst_address, size,
                       r.commit_value, token)

    def end_grant(self, granted: Granted, commit: bool) -> XpmoveError | None:
        """Finish a loan's grant and free the driver: `commit` publishes the head (the records
        become visible, once, with the grant's sequence numbers); otherwise the space is given
        back. Either way the holder's proof, the post of the lock, the doorbell if committed.

        If the grant is no longer ours (the adapter took it back: it restarted without us)
        nothing is written and the error, returned, says nothing was delivered.
        """
        dst = granted.dst_id
        try:
            if (self.words[self.rings[dst].token] != granted.token
                    or receive_area.read_holder(self.words, self.by_id[dst]) != self.network_id):
                return LockTimeout(f"the adapter took back network ID {dst}'s lock from "
                                   f"network ID {self.network_id}'s loan: nothing was delivered")
            try:
                if commit:
                    receive_area.publish_head(self.words, self.by_id[dst].control, granted.head)
            finally:
                self._free_grant(dst, commit)
        finally:
            self._mutex.release()
        return None
