"""The iceoryx2 peer: publish-subscribe with zero-copy loans, as a bench transport (peers.py).

One service per receiving partition (a Slice of bytes; one publisher per sender), the sender
loans a sample, the workload fills the batch's packets IN the sample (`loan`), `send` publishes
it, and an event service of the same receiver wakes its listener (one notify per sample), as
iceoryx2's event-based-communication example does. Before its first batch a publisher waits
until the subscriber has attached their connection (`_handshake`): iceoryx2 attaches it
lazily, in the subscriber's next `receive()`, and until then a full buffer drops samples
(`send()` returns 0) although the publisher retries until delivered (iceoryx2 issue #305).

Where its files go: iceoryx2 keeps a management file in /dev/shm by design, and node and
service files under /tmp/iceoryx2/, which outlive the processes (the management file always).
So a bench gives its run's nodes a home of their own (`Iceoryx2Home`: a name prefix and a
root directory under /tmp, sent with `bench_open`), and removes it, whatever is left in it,
when the machine has stopped: the bench leaves /dev/shm and /tmp as it found them.

The iceoryx2 package (the ``peers`` extra) is imported only when a peer is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import struct
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hypervisor.config import MAX_NETWORK_ID
from partitions.blocks import BlockHandler
from scripts.workload.frames import FRAME, FrameError, FrameStamper, drain_frames
from scripts.workload.peers import ICEORYX2, check_whole
from scripts.workload.transports import (
    Batch,
    ReceiveEndpoint,
    SendTransport,
    TransportError,
    make_batch,
)

ICEORYX_BUFFER = 64  # samples a subscriber holds before a publisher waits
ICEORYX_CONNECT_S = 5.0  # how long a publisher waits to see its subscriber
ICEORYX_PUBLISHERS = 64
HELLO = struct.Struct("<I")  # a publisher's first sample: its network ID, shorter than a FRAME


SHM_DIR = "/dev/shm"  # where iceoryx2 puts its shared-memory files (POSIX shm names)
HOME = "iceoryx2_home"  # the bench_open field that carries an Iceoryx2Home (`message`)
HOME_DIR = "/tmp"  # where a home's root goes: iceoryx2's own default root is under it too,
# and a socket's path is short there whatever $TMPDIR says (see SOCKET_PATH_MAX)
HOME_NAME = "xpmove-iox2-"  # a home's root is HOME_DIR/HOME_NAME<token>, its prefix
# HOME_NAME<token>_
# iceoryx2 wakes listeners through unix datagram sockets named root + prefix + a listener ID
# of up to 39 digits + ".event"; a socket's path holds at most 107 bytes
SOCKET_PATH_MAX = 107
SOCKET_NAME_MAX = 39 + len(".event")


@dataclass(frozen=True)
class Iceoryx2Home:
    """Where one run's iceoryx2 nodes keep their files: shared-memory names starting with
    `prefix`, node and service files under the directory `root`. Made by the bench
    (`create`), sent to every partition (`message`, `from_message`), and removed by the bench
    once the partitions have stopped (`remove`)."""

    prefix: str
    root: str

    @classmethod
    def create(cls) -> Iceoryx2Home:
        """A fresh home: its root made now (0700), its prefix unique with it."""
        root = tempfile.mkdtemp(prefix=HOME_NAME, dir=HOME_DIR)
        home = cls(f"{os.path.basename(root)}_", root)
        longest = len(home.root) + 1 + len(home.prefix) + SOCKET_NAME_MAX
        if longest > SOCKET_PATH_MAX:  # only if HOME_DIR's /tmp were a longer link's name
            home.remove()
            raise TransportError(f"iceoryx2: the home {home.root} makes socket paths of "
                                 f"{longest} bytes (at most {SOCKET_PATH_MAX})")
        return home

    @classmethod
    def from_message(cls, home: Mapping[str, str]) -> Iceoryx2Home:
        return cls(str(home["prefix"]), str(home["root"]))

    def message(self) -> dict[str, str]:
        return {"prefix": self.prefix, "root": self.root}

    def files(self) -> list[str]:
        """The shared-memory files of this home that exist now."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(self.prefix))
        return []

    def remove(self) -> None:
        """Unlink this home's shared-memory files and its directory (idempotent)."""
        for name in self.files():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name))
        shutil.rmtree(self.root, ignore_errors=True)


class Iceoryx2Node:
    """The process's one iceoryx2 node (created on first use, signal handling left to us), in
    the home the bench gave (`use_home`), else in iceoryx2's default places."""

    _node: Any = None
    _home: Iceoryx2Home | None = None
    _lock = threading.Lock()

    @classmethod
    def use_home(cls, home: Iceoryx2Home | None) -> None:
        """Where the node is to be made (None: iceoryx2's default places); a TransportError
        (nothing changed) if it was made elsewhere already: its files would be left behind,
        and the peers would not find each other."""
        with cls._lock:
            if cls._node is not None and cls._home != home:
                raise TransportError(f"iceoryx2: this partition's node lives in {cls._home}; "
                                     f"a run asked for {home}")
            cls._home = home

    @classmethod
    def drop(cls) -> None:
        """Let the node go (its ports hold it until they are released); a later `get` makes
        a new one, in the same home. For a process done with iceoryx2."""
        with cls._lock:
            cls._node = None

    @classmethod
    def get(cls) -> Any:
        with cls._lock:
            if cls._node is None:
                import iceoryx2 as iox2

                iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
                builder = iox2.NodeBuilder.new()
                if cls._home is not None:
                    config = iox2.config.default()
                    config.global_cfg.prefix = iox2.FileName.new(cls._home.prefix)
                    config.global_cfg.root_path = iox2.Path.new(cls._home.root + "/")
                    builder = builder.config(config)
                cls._node = (builder.signal_handling_mode(iox2.SignalHandlingMode.Disabled)
                             .create(iox2.ServiceType.Ipc))
            return cls._node


def _services(name: str) -> tuple[Any, Any, Any]:
    """(publish-subscribe service, wake event service, attached event service) of one receiving
    partition, created or opened with the same settings on both sides. Publishers notify
    `wake` after each sample; the subscriber notifies `attached` (event ID: the publisher's
    network ID) when it has received a publisher's hello."""
    import iceoryx2 as iox2

    node = Iceoryx2Node.get()
    data = (node.service_builder(iox2.ServiceName.new(name))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .max_publishers(ICEORYX_PUBLISHERS)
            .subscriber_max_buffer_size(ICEORYX_BUFFER)
            .enable_safe_overflow(False)  # a full subscriber makes the publisher wait
            .open_or_create())
    wake = (node.service_builder(iox2.ServiceName.new(name + "/wake"))
            .event().max_notifiers(ICEORYX_PUBLISHERS).open_or_create())
    attached = (node.service_builder(iox2.ServiceName.new(name + "/attached"))
                .event().max_listeners(ICEORYX_PUBLISHERS).event_id_max_value(MAX_NETWORK_ID)
                .open_or_create())
    return data, wake, attached


def _await_subscriber(data: Any, publisher: Any, dst: int) -> None:
    """Wait until `publisher` is connected to the destination's subscriber: iceoryx2 connects
    ports lazily, and a sample sent before that reaches nobody (`send()` returns 0) and would be
    counted as lost."""
    deadline = time.monotonic() + ICEORYX_CONNECT_S
    while data.dynamic_config.number_of_subscribers < 1:
        if time.monotonic() >= deadline:
            raise TransportError(f"iceoryx2: partition {dst}'s subscriber did not appear "
                                 f"within {ICEORYX_CONNECT_S} s")
        time.sleep(0.001)  # polling another process's registration, with a deadline
    publisher.update_connections()


def _handshake(publisher: Any, notifier: Any, attached: Any, network_id: int, dst: int) -> None:
    """Send a hello and wait until the subscriber says it received it: only then is the
    connection attached on its side, and only from then on does RetryUntilDelivered hold (a
    sample that finds the buffer full before that is dropped: `send()` returns 0). The
    subscriber attaches in its next `receive()`, so the wake notify is repeated until the
    answer comes, within ICEORYX_CONNECT_S."""
    import iceoryx2 as iox2

    sample = publisher.loan_slice_uninit(HELLO.size)
    HELLO.pack_into(sample.payload().as_memory_view().cast("B"), 0, network_id)
    sample.assume_init().send()
    deadline = time.monotonic() + ICEORYX_CONNECT_S
    step = iox2.Duration.from_millis(10)
    while True:
        notifier.notify()
        if any(a.id.as_value == network_id for a in attached.timed_wait(step)):
            return
        if time.monotonic() >= deadline:
            raise TransportError(f"iceoryx2: partition {dst}'s subscriber did not take the "
                                 f"hello of partition {network_id} within "
                                 f"{ICEORYX_CONNECT_S} s")


def _release(*ports: Any) -> None:
    for port in ports:
        if port is not None:
            port.delete()


class Iceoryx2Subscriber(ReceiveEndpoint):
    """This partition's service: one subscriber, woken by its listener; each sample is one batch
    of frames, checked in the sample's memory and then released."""

    channel = ICEORYX2

    def __init__(self) -> None:
        self._sub: Any = None
        self._listener: Any = None
        self._attached: Any = None  # notifier: answers a publisher's hello
        self._services: tuple = ()

    def open(self, network_id: int) -> str:
        self.close()
        name = f"xpmove/{uuid.uuid4().hex}/{network_id}"
        self._services = data, wake, attached = _services(name)
        self._sub = data.subscriber_builder().buffer_size(ICEORYX_BUFFER).create()
        self._listener = wake.listener_builder().create()
        self._attached = attached.notifier_builder().create()
        return name

    def poll(self, handler: BlockHandler, timeout: float) -> int:
        import iceoryx2 as iox2

        sub, listener = self._sub, self._listener
        if sub is None:
            return 0
        n = self._drain(sub, handler)
        if n:
            listener.try_wait()
            return n
        listener.timed_wait(iox2.Duration.from_secs_f64(timeout))
        return self._drain(sub, handler)

    def _drain(self, sub: Any, handler: BlockHandler) -> int:
        n = 0
        while (sample := sub.receive()) is not None:
            try:
                payload = sample.payload()
                size = payload.len()
                view = payload.as_memory_view().cast("B")
                if size < FRAME.size:  # a publisher's hello: this connection is attached
                    self._answer(view, size)
                    continue
                count, end = drain_frames(view, np.frombuffer(view, np.uint8), 0, size, handler)
                check_whole(end, size, "iceoryx2")
                n += count
            finally:
                sample.delete()
        return n

    def _answer(self, view: memoryview, size: int) -> None:
        import iceoryx2 as iox2

        if size != HELLO.size:
            raise FrameError(f"iceoryx2: a sample of {size} bytes is neither a hello "
                             f"({HELLO.size}) nor a frame (>= {FRAME.size})")
        (network_id,) = HELLO.unpack_from(view)
        self._attached.notify_with_custom_event_id(iox2.EventId.new(network_id))

    def close(self) -> None:
        _release(self._sub, self._listener, self._attached)
        self._sub = self._listener = self._attached = None
        self._services = ()


class Iceoryx2Publisher(FrameStamper, SendTransport):
    """A publisher and a notifier per destination service. `loan` lends a sample laid out as the
    batch; the workload fills it in place; `send` stamps the frames and publishes it."""

    name = channel = ICEORYX2

    def __init__(self, network_id: int):
        super().__init__(network_id)
        self._names: dict[int, str] = {}
        self._ports: dict[int, tuple[Any, Any]] = {}  # publisher, notifier
        self._services: dict[int, tuple[Any, Any, Any]] = {}
        self._loaned: Any = None

    def connect(self, names: dict[int, str]) -> None:
        self._names.update(names)

    def _ports_for(self, dst: int, span: int) -> tuple[Any, Any]:
        ports = self._ports.get(dst)
        if ports is None:
            import iceoryx2 as iox2

            try:
                data, wake, attached = self._services[dst] = _services(self._names[dst])
                answers = attached.listener_builder().create()  # before the hello is sent
                publisher = notifier = None
                try:
                    publisher = (data.publisher_builder().initial_max_slice_len(span)
                                 .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
                                 .backpressure_strategy(
                                     iox2.BackpressureStrategy.RetryUntilDelivered)
                                 .create())
                    notifier = wake.notifier_builder().create()
                    _await_subscriber(data, publisher, dst)
                    _handshake(publisher, notifier, answers, self.network_id, dst)
                except BaseException:
                    _release(publisher, notifier)
                    raise
                finally:
                    answers.delete()
                ports = self._ports[dst] = (publisher, notifier)
            except (KeyError, TransportError):
                raise
            except Exception as exc:
                raise TransportError(f"iceoryx2: cannot publish to partition {dst}: "
                                     f"{exc}") from None
        return ports

    def loan(self, dst: int, batch: Batch) -> Batch:
        span = len(batch.span)
        publisher, _ = self._ports_for(dst, span)
        sample = publisher.loan_slice_uninit(span)
        self._loaned = sample
        view = sample.payload().as_memory_view().cast("B")
        return make_batch(view, len(batch.slots[0].payload), batch.layout, len(batch.slots))

    def send(self, dst: int, batch: Batch, errors: Counter, timeout: float,
             stop: threading.Event) -> int:
        n = len(batch.slots)
        sample, self._loaned = self._loaned, None
        if sample is None:  # not loaned: copy the batch into a sample
            loaned = self.loan(dst, batch)
            loaned.span[:] = batch.span
            sample, self._loaned = self._loaned, None
            batch = loaned
        _, notifier = self._ports[dst]
        last = self.stamp(dst, batch)
        try:
            reached = sample.assume_init().send()
            notifier.notify()
        except Exception as exc:  # iceoryx2's SendError and NotifierNotifyError
            errors[type(exc).__name__] += n
            return 0
        if not reached:  # iceoryx2 dropped it (seen under back-pressure at batch 1): not
            # sent, reported as an error; the numbers are used again, so no gap follows
            errors["iceoryx2: sample reached no subscriber"] += n
            return 0
        self.stamped(dst, last)
        return n

    def close(self) -> None:
        ports, self._ports = self._ports, {}
        if self._loaned is not None:
            self._loaned.delete()
            self._loaned = None
        for publisher, notifier in ports.values():
            _release(publisher, notifier)
        self._services.clear()
        self._names.clear()
