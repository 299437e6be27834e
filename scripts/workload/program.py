"""The built-in workload as a partition program: `program = "scripts.workload.program:main"`.

launch, bench and soak run it in every partition and steer it with commands
(`Machine.call(network_id, {"cmd": ...})`, answered through `Port.on_command`):

    traffic      start all-to-all verified traffic on the adapter's flows and leases
                 (launch, soak); a repeat of the `share` already given is answered as it was
    receive_on   only receive and verify (a partition that is not sending)
    bench_open   start a load-generator run: zero the counters, receive on one transport
                 (tcp: listens on `bind`, default loopback, returns its `port`; zmq, pipe,
                 iceoryx2: returns its `address`; iceoryx2 also takes `iceoryx2_home`, where
                 this process's node keeps its files)
    bench_send   send to `peers` on that transport (tcp and the peers: connect to `ports`
                 first, the destinations' ports or addresses; tcp: [address, port] for a
                 destination on another host)
    bench_count  the cheap counters, polled during a run
    bench_close  end a run: stop sending, close the run's sockets, report with latencies
    stats        the full report (sent, received, errors, latencies, pending bytes)
    halt         stop sending and receiving and report (before the machine stops)

The program ends when the machine stops the partition (`port.stop`).
"""

from __future__ import annotations

import os

from adapter.errors import XpmoveError
from adapter.protocol import FLOWS, Flow
from partitions.port import Port
from scripts.workload import peers
from scripts.workload.adapter_flows import (
    LEASE,
    LOAN,
    SYNC_SUFFIX,
    AdapterFlow,
    AdapterRing,
    LeaseFlow,
    LoanFlow,
)
from scripts.workload.iceoryx2_peer import (
    HOME,
    Iceoryx2Home,
    Iceoryx2Node,
    Iceoryx2Publisher,
    Iceoryx2Subscriber,
)
from scripts.workload.sockets import LOOPBACK, SwitchPort, TcpLinks, TcpListener
from scripts.workload.traffic import PlanError, Traffic, TrafficPlan
from scripts.workload.transports import ReceiveEndpoint, SendTransport, TransportError

ADAPTER_FLOWS = tuple(f.value for f in FLOWS)
SYNC_FLOWS = tuple(f + SYNC_SUFFIX for f in ADAPTER_FLOWS)  # one request per packet, literally
ADAPTER_TRANSPORTS = (*ADAPTER_FLOWS, LOAN, LEASE, *SYNC_FLOWS)  # every adapter transport
TRAFFIC_FLOWS = (*ADAPTER_FLOWS, LEASE)  # what launch and soak may send by (`traffic`)
TRANSPORTS = (*ADAPTER_TRANSPORTS, "tcp", "vswitch", *peers.PEERS)
PROGRAM = f"{__name__}:main"


def failure(exc: BaseException) -> dict:
    return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


def _home(home: object) -> Iceoryx2Home:
    """The `iceoryx2_home` of a bench_open: {"prefix": str, "root": str}, else a PlanError."""
    if (not isinstance(home, dict) or set(home) != {"prefix", "root"}
            or not all(isinstance(v, str) and v for v in home.values())):
        raise PlanError(f"{HOME}: {home!r} is not {{'prefix': name prefix, 'root': directory}}")
    return Iceoryx2Home.from_message(home)


class Workload:
    """Every transport this partition can send or receive with, and the traffic over them."""

    def __init__(self, port: Port):
        self.port = port
        self.traffic = Traffic(port.network_id, port.memory, port.send_space)
        self.ring = AdapterRing(port)
        for peer in port.peers:  # a restarted partition continues its sequences
            self.traffic.expect_after(self.ring.channel, peer, port.delivered(peer))
        self.tcp_in = TcpListener()
        self.tcp_out = TcpLinks(port.network_id)
        self.switch = SwitchPort(port.network_id)
        self.leases = LeaseFlow(port)
        self.senders: dict[str, SendTransport] = {
            **{f.value: AdapterFlow(port, f) for f in Flow},
            **{f.value + SYNC_SUFFIX: AdapterFlow(port, f, sync=True) for f in Flow},
            LOAN: LoanFlow(port),
            LEASE: self.leases,
            "tcp": self.tcp_out,
            "vswitch": self.switch}
        self.peer_in: dict[str, ReceiveEndpoint] = {}  # created on first use (optional packages)
        self.share: object = None  # the launch share being sent (cmd_traffic)

    def _peer_endpoint(self, name: str) -> ReceiveEndpoint:
        """The peer's receive endpoint and (in self.senders) its send transport."""
        if name not in self.peer_in:
            nid = self.port.network_id
            try:
                if name == peers.ZMQ:
                    pair: tuple = (peers.ZmqPull(), peers.ZmqPush(nid))
                elif name == peers.PIPE:
                    pair = (peers.PipeListener(), peers.PipeLinks(nid))
                else:
                    pair = (Iceoryx2Subscriber(), Iceoryx2Publisher(nid))
            except ImportError as exc:
                raise TransportError(f"{name}: its package is not installed ({exc}); "
                                     f"pip install -e '.[peers]'") from None
            self.peer_in[name], self.senders[name] = pair
        return self.peer_in[name]

    def dispatch(self, msg: dict) -> dict:
        handler = getattr(self, f"cmd_{msg.get('cmd')}", None)
        if handler is None:
            return {"ok": False, "error": "UnknownCommand",
                    "message": f"cmd {msg.get('cmd')!r} (the workload knows: "
                               f"{sorted(n[4:] for n in dir(self) if n.startswith('cmd_'))})"}
        return handler(msg)

    def cmd_traffic(self, msg: dict) -> dict:
        """Start sending (and receiving). A command naming the `share` this process was
        already given (launch repeats one whose reply it lost) is answered as the first was,
        whether that traffic still runs or has ended (a process is given its share once: never
        sent twice); any other while the traffic runs is refused ("already sending")."""
        share = msg.get("share")
        if share is not None and share == self.share:
            return {"ok": True, "repeated": True}
        plan = TrafficPlan.from_message(msg, self.port.send_space, TRAFFIC_FLOWS)
        self.traffic.start_receiving(self.ring)
        self.traffic.start_sending(plan, {f: self.senders[f] for f in plan.flows})
        self.share = share
        return {"ok": True}

    def cmd_receive_on(self, msg: dict) -> dict:
        self.traffic.start_receiving(self.ring)
        return {"ok": True}

    def cmd_bench_open(self, msg: dict) -> dict:
        """tcp: listen on a fresh loopback port (returned); vswitch: connect to the switch on
        `vswitch_port` and wait for its acknowledgement; fig11/fig12/fig12-loan: the receive
        ring; a peer (zmq, pipe, iceoryx2): a fresh endpoint whose `address` is returned."""
        transport = msg.get("transport")
        if transport not in TRANSPORTS:
            raise PlanError(f"transport: unknown {transport!r} (known: {list(TRANSPORTS)})")
        home = _home(msg[HOME]) if HOME in msg else None  # refused before anything changes
        self.close_sockets()
        self.traffic.reset()
        reply: dict = {"ok": True, "pid": os.getpid()}
        try:
            if transport in ADAPTER_TRANSPORTS:
                self.traffic.start_receiving(self.ring)
            elif transport == "tcp":
                reply["port"] = self.tcp_in.open(msg.get("bind", LOOPBACK))
                self.traffic.start_receiving(self.tcp_in)
            elif transport in peers.PEERS:
                endpoint = self._peer_endpoint(transport)
                if isinstance(endpoint, Iceoryx2Subscriber):
                    if home is not None:  # before the node is made: its files go there
                        Iceoryx2Node.use_home(home)
                    reply["address"] = endpoint.open(self.port.network_id)
                else:
                    reply["address"] = endpoint.open()  # type: ignore[attr-defined]
                self.traffic.start_receiving(endpoint)
            else:
                self.switch.connect(int(msg["vswitch_port"]))
                self.traffic.start_receiving(self.switch)
        except (TransportError, OSError) as exc:
            self.close_sockets()
            return failure(exc)
        return reply

    def cmd_bench_send(self, msg: dict) -> dict:
        transport = msg.get("transport")
        plan = TrafficPlan.from_message({**msg, "flows": [transport]}, self.port.send_space,
                                        TRANSPORTS)
        try:
            if transport == "tcp":  # a port on loopback, or [address, port] on another host
                self.tcp_out.connect({int(k): (str(v[0]), int(v[1])) if isinstance(v, list)
                                      else int(v) for k, v in msg["ports"].items()})
            elif transport in peers.PEERS:
                self._peer_endpoint(transport)
                sender = self.senders[transport]
                sender.connect({int(k): v for k, v in msg["ports"].items()})  # type: ignore
            elif transport == LEASE:  # taken now, as a socket is opened now, not per packet
                self.leases.connect(plan.peers, plan.send_timeout)
            self.traffic.start_sending(plan, {transport: self.senders[transport]})
        except (TransportError, OSError, XpmoveError, PlanError) as exc:
            self.leases.close_leases()  # a run refused keeps no lease it took for itself
            return failure(exc)
        return {"ok": True, "batch_used": self.traffic.batch_used}

    def cmd_bench_count(self, msg: dict) -> dict:
        return {"ok": True, **self.traffic.counts()}

    def cmd_bench_close(self, msg: dict) -> dict:
        stopped = self.traffic.stop_sending()
        self.close_sockets()
        stats = self.traffic.snapshot(int(msg.get("latency_samples", 0)))
        return {"ok": True, "stopped": stopped, "stats": stats}

    def cmd_stats(self, msg: dict) -> dict:
        return {"ok": True, "stats": self.traffic.snapshot(),
                "pending_bytes": self.port.pending_bytes()}

    def cmd_halt(self, msg: dict) -> dict:
        self.traffic.stop()
        return {"ok": True, "stats": self.traffic.snapshot()}

    def close_sockets(self) -> None:
        self.tcp_out.close()
        for name in self.peer_in:
            self.senders[name].close()
        endpoints = (("tcp", self.tcp_in), ("vswitch", self.switch), *self.peer_in.items())
        for channel, endpoint in endpoints:
            self.traffic.stop_receiving(channel)
            endpoint.close()

    def close(self) -> None:
        self.traffic.stop()
        self.close_sockets()
        Iceoryx2Node.drop()  # the node's own files go now (the bench removes its home)


def main(port: Port) -> None:
    """Serve the tools' commands until the machine stops this partition."""
    workload = Workload(port)
    port.on_command(workload.dispatch)
    try:
        port.stop.wait()
    finally:
        workload.close()
