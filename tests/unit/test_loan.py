"""The loan's own rules, without processes: its state table, the views it hands out and when it
may end (partitions/loan.py). The driver is a stand-in recording what the loan asks of it: the
grant itself is covered by tests/integration/test_loan.py."""

from __future__ import annotations

import numpy as np
import pytest

from adapter.errors import OutOfBounds, RingCorrupt
from partitions.driver import Sent
from partitions.lending import Granted
from partitions.loan import Loan, LoanEnded, LoanExported, LoanRun, LoanState


class FakeDriver:
    def __init__(self) -> None:
        self.physical = memoryview(bytearray(4096))
        self.ended: list[bool] = []

    def end_grant(self, granted: Granted, commit: bool) -> None:
        self.ended.append(commit)


def make(size: int = 64, cls=Loan, **run) -> tuple[Loan, FakeDriver, list]:
    driver, ends = FakeDriver(), []
    granted = Granted(2, 7, size, run.get("packets", 1), 1024, size, 0, 1)
    loan = cls(driver, granted, lambda ended: ends.append(ended is loan), **run)
    return loan, driver, ends


def test_commit_ends_the_loan_once_and_releases_the_view():
    loan, driver, ends = make()
    loan.view[:4] = b"abcd"
    assert bytes(driver.physical[1024:1028]) == b"abcd"  # written in place, no copy
    assert loan.commit() == Sent(2, 7, 64, 1)
    assert (driver.ended, ends, loan.state) == ([True], [True], LoanState.COMMITTED)
    with pytest.raises(ValueError):  # a released memoryview
        loan.view[0] = 1
    for end in (loan.commit, loan.give_back):
        with pytest.raises(LoanEnded, match="network ID 2 is already committed"):
            end()
    assert driver.ended == [True]


def test_the_context_manager_commits_or_gives_back():
    loan, driver, _ = make()
    with loan as buf:
        buf[:] = bytes(range(64))
    assert driver.ended == [True]
    loan, driver, _ = make()
    with pytest.raises(KeyError), loan:
        raise KeyError("the program failed")
    assert (driver.ended, loan.state) == ([False], LoanState.GIVEN_BACK)
    loan, driver, _ = make()
    with loan:
        loan.give_back()  # ended inside the block: the exit does nothing more
    assert driver.ended == [False]


@pytest.mark.parametrize("export", [
    lambda view: view[8:16],
    lambda view: view.cast("Q"),
    lambda view: memoryview(view),
    lambda view: np.frombuffer(view, np.uint8)[2:4],
    lambda view: np.asarray(view).reshape(8, 8),
])
def test_a_live_export_keeps_the_loan_held(export):
    """Anything made from the view can still write into the ring: while one lives the loan
    cannot end (nothing is asked of the driver, and the loan's own view still works: a slice
    lets the view go but not the region under it); once it is gone, it can."""
    loan, driver, ends = make()
    kept = export(loan.view)
    for end in (loan.commit, loan.give_back):
        with pytest.raises(LoanExported, match="network ID 2 is still alive") as raised:
            end()
        assert raised.value.loan is loan  # a `with` block's only handle on it
        loan.view[0] = 7
        loan.write(1, b"\x08")
    assert (driver.ended, ends, loan.state) == ([], [], LoanState.HELD)
    del kept
    loan.give_back()
    assert driver.ended == [False]


def test_write_is_bounds_checked():
    loan, driver, _ = make(16)
    loan.write(12, b"tail")
    for offset, data in ((13, b"tail"), (-1, b"x"), (16, b"x")):
        with pytest.raises(OutOfBounds, match=rf"\[{offset}, {offset + len(data)}\)"):
            loan.write(offset, data)
    assert bytes(driver.physical[1024:1040]) == bytes(12) + b"tail"
    with pytest.raises(IndexError):
        loan.view[16] = 1


def test_a_run_loan_gives_padded_packet_views():
    loan, driver, _ = make(3 * 16, LoanRun, packets=3, length=13)
    with loan as run:
        assert run is loan
        for i in range(3):
            run.packet(i)[:] = bytes([i + 1]) * 13
        with pytest.raises(IndexError, match="packet 3 of a loaned run of 3"):
            run.packet(3)
    assert bytes(driver.physical[1024 + 16:1024 + 32]) == b"\x02" * 13 + bytes(3)


def test_a_failed_end_still_ends_the_loan():
    """end_grant says the grant was taken back: the loan is over, having delivered nothing."""
    loan, driver, ends = make()
    driver.end_grant = lambda granted, commit: RingCorrupt("taken back")  # type: ignore
    with pytest.raises(RingCorrupt):
        loan.commit()
    assert (loan.state, ends) == (LoanState.GIVEN_BACK, [True])
