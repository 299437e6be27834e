"""The peers' pure parts: which are installed, the skip notes, frames in one message."""

from __future__ import annotations

import os

import numpy as np
import pytest

from partitions.blocks import as_bytes
from scripts.loadgen.benchcore import installed_transports
from scripts.workload.frames import FRAME, FrameError, drain_frames
from scripts.workload.peers import PEER_MODULES, PEERS, available, installed
from scripts.workload.transports import BatchLayout, make_batch


def fake_find(present: set[str]):
    return lambda name: object() if name in present else None


def test_installed_with_a_fake_missing_module():
    assert installed(None, fake_find(set()))
    assert installed("zmq", fake_find({"zmq"}))
    assert not installed("no_such_module_xpmove", fake_find({"zmq"}))
    assert available(PEERS, fake_find({"zmq"})) == ("zmq", "pipe")  # pipe: stdlib only


def test_missing_transport_is_skipped_with_a_note():
    needs = {**PEER_MODULES, "zmq": "no_such_module_xpmove"}
    kept, notes = installed_transports(("fig11", "tcp", "zmq", "pipe"), needs,
                                       lambda m: installed(m, fake_find({"iceoryx2"})))
    assert kept == ("fig11", "tcp", "pipe")
    assert len(notes) == 1 and "zmq" in notes[0] and "no_such_module_xpmove" in notes[0]
    assert "[peers]" in notes[0]


def test_nothing_skipped_without_notes():
    kept, notes = installed_transports(("fig11", "tcp"), PEER_MODULES, lambda m: False
                                       if m else True)
    assert kept == ("fig11", "tcp") and notes == []


def _message(sizes_counts, src=3):
    """Frames back to back as one message: (size, count) runs, sequence numbers from 1."""
    out, seq = bytearray(), 0
    for size, count in sizes_counts:
        for _ in range(count):
            seq += 1
            out += FRAME.pack(1, src, seq, size) + bytes([seq % 251]) * size
    return out


@pytest.mark.parametrize("runs", [[(64, 1)], [(64, 40)], [(32, 3), (2048, 20), (32, 1)]])
def test_drain_frames_hands_every_frame_once_in_order(runs):
    msg = _message(runs)
    got = []
    n, end = drain_frames(memoryview(msg), as_bytes(msg), 0, len(msg),
                          lambda s, q, rows: got.extend((s, q + i, bytes(rows[i]))
                                                        for i in range(len(rows))))
    assert end == len(msg) and n == sum(c for _, c in runs) == len(got)
    assert [q for _, q, _ in got] == list(range(1, n + 1))
    assert all(s == 3 and set(p) == {q % 251} for s, q, p in got)


def test_drain_frames_stops_at_a_partial_frame_and_rejects_huge_ones():
    msg = _message([(64, 2)])
    n, end = drain_frames(memoryview(msg), as_bytes(msg), 0, len(msg) - 1, lambda *a: None)
    assert (n, end) == (1, FRAME.size + 64)
    bad = bytearray(FRAME.pack(1, 2, 1, 1 << 40))
    with pytest.raises(FrameError):
        drain_frames(memoryview(bad), as_bytes(bad), 0, len(bad), lambda *a: None)


def test_stamped_batch_drains_back():
    from scripts.workload.peers import PipeLinks

    links = PipeLinks(5)
    region = bytearray(1 << 16)
    batch = make_batch(memoryview(region), 100, BatchLayout(FRAME.size), 20)
    batch.payloads[:] = np.arange(100, dtype=np.uint8)
    last = links.stamp(9, batch)
    assert last == 20
    links.stamped(9, last)
    assert links.stamp(9, batch.prefix(1)) == 21
    seqs = []
    span = bytes(batch.span)
    drain_frames(memoryview(span), as_bytes(span), 0, len(span),
                 lambda s, q, rows: seqs.extend(range(q, q + len(rows))))
    assert seqs[0] == 21  # the prefix re-stamped slot 0


def test_without_work_takes_fill_and_check_out_of_c():
    from scripts.loadgen.benchcore import Sample, fit_s, without_work

    samples = [Sample(i * 0.1, i * 1.0, i * 1000, 0, True) for i in range(10)]
    work = [i * 0.5 for i in range(10)]  # half of every CPU second is fill and check
    assert fit_s(samples).s == pytest.approx(1000)
    assert fit_s(without_work(samples, work)).s == pytest.approx(2000)
    with pytest.raises(ValueError):
        without_work(samples, work[:-1])


def test_floor_table_fits_80_columns():
    from scripts.loadgen.report import floor_table
    from scripts.tables import ELLIPSIS, render_text

    text = render_text(floor_table({
        "64": {"S": 2.24e7, "batch": 32, "split": {"S": 1.12e7, "cores": 2, "batch": 32}},
        "1048552": {"S": 4070.0, "batch": 1}}), 80)
    assert ELLIPSIS not in text and max(map(len, text.splitlines())) <= 80
    assert "22,400,000" in text and "1 MiB-24" in text
    assert "11,200,000" in text and "50%" in text


def test_floor_is_positive_and_checked():
    from scripts.loadgen.floor import floor_s

    assert floor_s(64, 1, seconds=0.02) > 0
    assert floor_s(2048, 32, seconds=0.02) > 0


def test_an_iceoryx2_home_is_its_own_and_goes_whole(tmp_path, monkeypatch):
    """A bench's iceoryx2 home: a fresh directory under /tmp and a name prefix no other home
    shares, sent as a message and read back; `remove` takes every file of its prefix and the
    directory, and nothing else (twice is harmless)."""
    import scripts.workload.iceoryx2_peer as peer

    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(peer, "SHM_DIR", str(shm))
    home, other = peer.Iceoryx2Home.create(), peer.Iceoryx2Home.create()
    try:
        assert home.prefix != other.prefix and home.root != other.root
        assert os.path.dirname(home.root) == peer.HOME_DIR == "/tmp"
        assert peer.Iceoryx2Home.from_message(home.message()) == home
        for name in (f"{home.prefix}a.global_mgmt", f"{home.prefix}b.data",
                     f"{other.prefix}c", "iox2_d.global_mgmt"):
            (shm / name).write_bytes(b"x")
        os.mkdir(os.path.join(home.root, "nodes"))
        assert home.files() == [f"{home.prefix}a.global_mgmt", f"{home.prefix}b.data"]
        home.remove()
        home.remove()
        left = sorted(p.name for p in shm.iterdir())
        assert left == sorted([f"{other.prefix}c", "iox2_d.global_mgmt"])
        assert not os.path.exists(home.root) and os.path.isdir(other.root)
    finally:
        home.remove()
        other.remove()


@pytest.mark.parametrize("home", [None, "x", {"prefix": "p"}, {"prefix": "p", "root": ""},
                                  {"prefix": "p", "root": "/r", "more": 1},
                                  {"prefix": 1, "root": "/r"}])
def test_a_bench_open_with_a_malformed_iceoryx2_home_is_refused_naming_it(home):
    from scripts.workload.program import _home
    from scripts.workload.traffic import PlanError

    with pytest.raises(PlanError, match="iceoryx2_home") as caught:
        _home(home)
    assert repr(home) in str(caught.value)


def test_an_iceoryx2_home_whose_socket_paths_would_not_fit_is_refused(tmp_path, monkeypatch):
    """iceoryx2 names a listener's socket root + prefix + up to 45 bytes: a home where that
    passes a socket path's 107 bytes is refused naming it, and nothing of it is left."""
    import scripts.workload.iceoryx2_peer as peer
    from scripts.workload.transports import TransportError

    deep = tmp_path / ("d" * max(1, peer.SOCKET_PATH_MAX - len(str(tmp_path))))
    deep.mkdir()
    monkeypatch.setattr(peer, "HOME_DIR", str(deep))
    with pytest.raises(TransportError, match="socket paths of [0-9]+ bytes"):
        peer.Iceoryx2Home.create()
    assert list(deep.iterdir()) == []
    monkeypatch.undo()
    home = peer.Iceoryx2Home.create()  # under /tmp: it fits
    assert len(home.root) + 1 + len(home.prefix) + peer.SOCKET_NAME_MAX <= peer.SOCKET_PATH_MAX
    home.remove()
