"""Two hosts on this machine (`mpiexec -n 2`, issue 15): all-to-all traffic in both flows
across hosts, every packet verified, every IPC name unlinked, and a host's adapter killed under
traffic without losing or doubling an accepted packet. Real MPI ranks, real fabrics."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import booted_partition

pytest.importorskip("mpi4py", reason="the .[cluster] extra (mpi4py, mpich) is not installed")

REPO = Path(__file__).resolve().parents[2]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
CONFIG = "configs/two-hosts.toml"
TIMEOUT_S = 120
RUN = re.compile(r"host (\w+) \(run (xpm-[0-9a-f]+)\)")
VERDICT = re.compile(r"clean: ([\d,]+) of ([\d,]+) accepted packets verified, 0 refused, "
                     r"0 corrupt/gap/duplicate, dead: none")
INTERVAL = re.compile(r"\]\s+([\d,]+) verified")
# a host ended by its own signal, or by the other's ending if that came first
ENDED = re.compile(r"host (?:east|west): (?:KeyboardInterrupt|HostEnding)\b[^;]*; ending the "
                   r"MPI job")


def mpi_runtime_names() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("mpich_shm_")}


def mapped_by_a_live_process(name: str) -> bool:
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if any(m.path == f"/dev/shm/{name}" for m in proc.memory_maps(grouped=True)):
                return True
    return False


@pytest.fixture(autouse=True)
def swept(tmp_path: Path):
    """Whatever a test did (a failed one may end the MPI job with a host's names still there),
    the names of its runs whose owner is dead are unlinked after it (`xpmove cleanup`); and
    the MPI runtime's own shared memory must be gone with its job (the test fails if not,
    after unlinking it, so the suite leaves /dev/shm as it found it)."""
    before = mpi_runtime_names()
    yield
    if (tmp_path / "runs").exists():
        subprocess.run([sys.executable, "-m", "scripts.cli", "cleanup"], cwd=REPO,
                       env=env(tmp_path), capture_output=True, timeout=TIMEOUT_S)
    left = sorted(n for n in mpi_runtime_names() - before if not mapped_by_a_live_process(n))
    for name in left:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{name}")
    assert not left, f"the MPI job left its runtime's shared memory: {left}"


def command(*argv: str, config: str | Path = CONFIG) -> list[str]:
    return [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "launch",
            "--config", str(config), *argv]


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XPMOVE_RUN_DIR": str(tmp_path / "runs")}


def words(text: str) -> str:
    return " ".join(text.split())


def assert_names_gone(out: str, tmp_path: Path) -> None:
    runs = dict(RUN.findall(words(out)))
    assert sorted(runs) == ["east", "west"], out
    left = [n for n in os.listdir("/dev/shm") if any(p in n for p in runs.values())]
    assert left == []
    assert not [f for f in os.listdir(tmp_path / "runs") if f.endswith(".json")]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:  # the test failed: end the job cleanly (mpiexec forwards SIGTERM)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_hosts_run_all_to_all_traffic_in_both_flows(tmp_path: Path) -> None:
    done = subprocess.run(command("--packets", "100"), cwd=REPO, env=env(tmp_path),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    verdict = VERDICT.search(words(out))
    assert verdict, out
    # 4 partitions, each to 3 peers (2 of them on the other host), 100 packets, 2 flows
    assert verdict.group(1) == verdict.group(2) == "2,400"
    # each host's fabric pulled what its partitions got from the other host: 2 x 2 x 100 x 2
    fabric = re.findall(r"fabric pulled ([\d,]+) packets in", words(out))
    assert len(fabric) == 2 and all(int(f.replace(",", "")) == 800 for f in fabric), out
    assert_names_gone(out, tmp_path)


def traffic_flows(proc: subprocess.Popen, deadline: float) -> bytes:
    """Read the launch's output until its progress lines show packets verified across the
    hosts (traffic is flowing); the output so far."""
    def flowing(text: str) -> bool:
        seen = INTERVAL.findall(text)
        return bool(seen) and int(seen[-1].replace(",", "")) > 1000
    return read_until(proc, flowing, deadline)


def read_until(proc: subprocess.Popen, done: Callable[[str], bool], deadline: float) -> bytes:
    """Read the job's output until `done(output so far)`; the output."""
    assert proc.stdout is not None
    out = b""
    while True:
        if done(out.decode(errors="replace")):
            return out
        assert time.monotonic() < deadline, out.decode()
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
        assert chunk or not ready, f"output ended before traffic:\n{out.decode()}"
        out += chunk


def of_rank(rank: int, launcher: psutil.Process) -> Iterator[tuple[psutil.Process, list[str]]]:
    """Each process of MPI rank `rank` (host `rank`) under the mpiexec `launcher`, with its
    command line."""
    for proc in launcher.children(recursive=True):
        try:
            if proc.environ().get("PMI_RANK") == str(rank):
                yield proc, proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def adapter_of(rank: int, launcher: psutil.Process) -> psutil.Process | None:
    """The adapter process of MPI rank `rank` (host `rank`) under the mpiexec `launcher`."""
    return next((p for p, argv in of_rank(rank, launcher) if "adapter.server" in argv), None)


def partition_of(rank: int, network_id: int, launcher: psutil.Process) -> psutil.Process | None:
    """The process of partition `network_id` on host `rank` (its boot block names it)."""
    for proc, argv in of_rank(rank, launcher):
        if booted_partition(argv) == network_id:
            return proc
    return None


def test_a_hosts_adapter_killed_under_traffic_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """West's adapter SIGKILLed under traffic is restarted: every accepted packet is verified
    once. While west cannot commit, the proxy rings on east fill, so on a loaded machine a send
    may be refused DestinationFull after its timeout (back-pressure, nothing accepted): the run
    is then NOT clean for that reason only."""
    proc = subprocess.Popen(command("--duration", "8"), cwd=REPO, env=env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = b""
    try:
        deadline = time.monotonic() + TIMEOUT_S
        out = traffic_flows(proc, deadline)
        launcher = psutil.Process(proc.pid)
        victim = adapter_of(1, launcher)
        assert victim is not None, "no adapter found under rank 1"
        victim.send_signal(signal.SIGKILL)
        restarted = None
        while restarted is None or restarted.pid == victim.pid:  # west's adapter came back
            assert time.monotonic() < deadline, "rank 1's adapter was not restarted"
            restarted = adapter_of(1, launcher)
            time.sleep(0.05)  # polling against the deadline
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
        out += rest
    finally:
        stop(proc)
    text = out.decode()
    verdict = re.search(r"clean: ([\d,]+) of ([\d,]+) accepted packets verified, ([\d,]+) "
                        r"refused, 0 corrupt/gap/duplicate, dead: none", words(text))
    assert verdict and verdict.group(1) == verdict.group(2), text
    refused = int(verdict.group(3).replace(",", ""))
    assert proc.returncode == (1 if refused else 0), text
    if refused:  # only back-pressure: the errors the adapters counted are destination_full
        errors = re.findall(r"errors: (\w+)", words(text))
        assert set(errors) == {"destination_full"}, text
    assert_names_gone(text, tmp_path)


def test_a_host_that_fails_alone_ends_the_run_on_every_host(tmp_path: Path) -> None:
    """adapter_restart_limit = 0: west's adapter SIGKILLed under traffic is not restarted, so
    west's work fails alone. West ends the run, east hears it at its next look, and both stop
    their machines and end the job together: no MPI_Abort, no name or run record left."""
    config = tmp_path / "give-up.toml"
    config.write_text((REPO / CONFIG).read_text().replace(
        "lock_timeout_s = 1.0", "lock_timeout_s = 1.0\nadapter_restart_limit = 0"))
    proc = subprocess.Popen(command("--duration", "30", config=config), cwd=REPO,
                            env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = traffic_flows(proc, time.monotonic() + TIMEOUT_S)
        runs = [f[:-5] for f in os.listdir(tmp_path / "runs") if f.endswith(".json")]
        victim = adapter_of(1, psutil.Process(proc.pid))
        assert victim is not None and len(runs) == 2, runs
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
        took = time.monotonic() - killed
    finally:
        stop(proc)
    text = words((out + rest).decode())
    assert proc.returncode == 1, text
    assert "host west: MachineError: the adapter died and is not restarted" in text, text
    assert "host east: HostEnding: host west ended the run; ending the MPI job" in text, text
    assert "Abort(" not in text, text
    assert took < 20, f"the job took {took:.1f} s to end"  # not the 30 s of traffic
    assert not [n for n in os.listdir("/dev/shm") if any(r in n for r in runs)]
    assert not [f for f in os.listdir(tmp_path / "runs") if f.endswith(".json")]


@pytest.mark.parametrize("argv, message", [
    (("launch",), "the config has 2 hosts (east, west): run it as `mpiexec -n 2 xpmove launch"),
    (("run",), "the config has 2 hosts (east, west): run it as `mpiexec -n 2 xpmove run"),
    (("bench",), "the config has 2 hosts (east, west): run it as `mpiexec -n 2 xpmove bench"),
    (("soak",), "xpmove soak: configs/two-hosts.toml places the partitions on 2 hosts "
                "([[host]] tables); across hosts run `mpiexec -n 2 xpmove launch|run|bench"),
])
def test_a_cluster_config_outside_mpiexec_is_one_line_naming_the_command(
        tmp_path: Path, argv: tuple[str, ...], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "scripts.cli", *argv, "--config", CONFIG],
                          cwd=REPO, env=env(tmp_path), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode != 0
    assert message in words(done.stderr) and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


def rank_process(rank: int, launcher: psutil.Process) -> psutil.Process:
    """MPI rank `rank`'s hypervisor (the `xpmove` process hydra started)."""
    found = next((p for p, argv in of_rank(rank, launcher) if "scripts.cli" in argv), None)
    assert found is not None, f"no rank {rank} under mpiexec"
    return found


def refused_down(tmp_path: Path, prefix: str) -> int:
    """DestinationDown answers the adapter of run `prefix` gave so far (xpmove status)."""
    done = subprocess.run([sys.executable, "-m", "scripts.cli", "status", "--once", "--json",
                           prefix], cwd=REPO, env=env(tmp_path), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        return 0
    snapshot = json.loads(done.stdout.splitlines()[-1])
    return sum(p["errors"].get("destination_down", 0) for p in snapshot["partitions"])


def kill_charlie_under_traffic(argv: list[str], tmp_path: Path
                               ) -> tuple[subprocess.Popen, bytes]:
    """Start the job, SIGKILL charlie (network ID 3, west) once traffic flows across the
    hosts, and let the job end; the job and all it printed."""
    proc = subprocess.Popen(argv, cwd=REPO, env=env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = b""
    try:
        out = traffic_flows(proc, time.monotonic() + TIMEOUT_S)
        charlie = partition_of(1, 3, psutil.Process(proc.pid))
        assert charlie is not None, "no process of charlie (network ID 3) under rank 1"
        charlie.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
        out += rest
    finally:
        stop(proc)
    return proc, out


def test_a_partition_of_the_other_host_dies_under_traffic_and_the_run_ends(
        tmp_path: Path) -> None:
    """Charlie (west, never restarted) is SIGKILLed under all-to-all traffic: east's adapter
    refuses moves to it once east hears, what east had accepted for it is dropped at west and
    counted, every other pair's packets are verified once, and the run ends NOT clean naming
    charlie, with every name unlinked, without waiting out the drain for packets charlie can
    never verify (no hang on either host)."""
    # long enough that the senders still send well after east hears, even on a loaded machine
    proc, out = kill_charlie_under_traffic(command("--duration", "8"), tmp_path)
    text = words(out.decode())
    assert proc.returncode == 1, text
    assert "NOT clean" in text and "dead: charlie (west)" in text, text
    assert "0 corrupt/gap/duplicate" in text, text
    assert "receivers still missing" not in text, text  # no drain waits for charlie's packets
    refused = re.search(r"([\d,]+) refused", text)
    assert refused and int(refused.group(1).replace(",", "")) > 0, text
    assert_names_gone(out.decode(), tmp_path)


def test_a_partition_restarted_under_traffic_continues_its_share_across_hosts(
        tmp_path: Path) -> None:
    """restart = "on-failure": charlie (west) SIGKILLed under traffic is restarted; its new
    incarnation sends what is left of its share (west's books) and receives what east keeps
    sending it. The run ends clean with exactly the packets asked for, naming the restart."""
    config = tmp_path / "restart.toml"
    config.write_text((REPO / CONFIG).read_text().replace(
        "lock_timeout_s = 1.0", 'lock_timeout_s = 1.0\nrestart = "on-failure"'))
    # 4 x 3 x 2 x 3,000 = 72,000 packets: charlie has sent a few of its 18,000 when killed
    proc, out = kill_charlie_under_traffic(command("--packets", "3000", config=config),
                                           tmp_path)
    text = words(out.decode())
    assert proc.returncode == 0, text
    verdict = VERDICT.search(text)
    assert verdict and verdict.group(1) == verdict.group(2) == "72,000", text
    assert "restarted: charlie (west) (1 time)" in text, text
    assert_names_gone(out.decode(), tmp_path)


def test_a_hung_host_is_down_for_the_others_and_nothing_is_lost(tmp_path: Path) -> None:
    """West's hypervisor (its fabric) stops answering under traffic: east's adapter says
    DestinationDown for west's partitions within the host timeout; when west comes back,
    every accepted packet is verified once."""
    proc = subprocess.Popen(command("--duration", "6"), cwd=REPO, env=env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = b""
    west = None
    try:
        deadline = time.monotonic() + TIMEOUT_S
        out = traffic_flows(proc, deadline)
        east_run = re.search(r"host east: run (xpm-[0-9a-f]+)", words(out.decode()))
        assert east_run, out.decode()
        west = rank_process(1, psutil.Process(proc.pid))
        west.suspend()
        while refused_down(tmp_path, east_run.group(1)) == 0:
            assert time.monotonic() < deadline, "east never said DestinationDown"
            time.sleep(0.2)  # polling against the deadline
        west.resume()
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
        out += rest
    finally:
        if west is not None:
            try:
                west.resume()
            except psutil.NoSuchProcess:
                pass
        stop(proc)
    text = words(out.decode())
    verdict = re.search(r"clean: ([\d,]+) of ([\d,]+) accepted packets verified, [\d,]+ "
                        r"refused, 0 corrupt/gap/duplicate, dead: none", text)
    assert verdict and verdict.group(1) == verdict.group(2), text
    assert_names_gone(text, tmp_path)


HOSTS = '\n[[host]]\nname = "east"\npartitions = ["{}"]\n\n[[host]]\nname = "west"\n' \
        'partitions = ["{}"]\n'


@pytest.mark.parametrize("example, first, second, said", [
    ("pingpong", "pinger", "ponger", ("fig11: 200 round trips of 64 B",
                                      "fig12: 200 round trips of 64 B")),
    ("loans", "producer", "consumer", ("consumer: 400 frames, each once and in order",)),
])
def test_users_programs_run_across_hosts(tmp_path: Path, example: str, first: str,
                                         second: str, said: tuple[str, ...]) -> None:
    """`mpiexec -n 2 xpmove run`: the README's examples, one partition on each host, unchanged
    (network IDs are global; the loans go into the remote partition's proxy ring)."""
    config = REPO / "examples" / f"{example}-hosts.toml"  # the README's, for ping-pong
    if not config.exists():
        config = tmp_path / config.name
        config.write_text((REPO / "examples" / f"{example}.toml").read_text()
                          + HOSTS.format(first, second))
    done = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "run", "--config",
         str(config), "--timeout", "60"],
        cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode == 0, out
    for line in said:
        assert line in out, out
    assert f"{first} (ID 1): returned" in out and f"{second} (ID 2): returned" in out, out
    assert "every program returned" in out, out


def cluster_bench(tmp_path: Path, *options: str) -> tuple[str, list[dict]]:
    """`mpiexec -n 2 xpmove bench --config two-hosts` with `options`, 0.5 s a run: its output
    (the test fails unless it exits 0) and the runs of its JSON."""
    out_json = tmp_path / "cluster.json"
    done = subprocess.run(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "bench", "--config",
         CONFIG, "--duration", "0.5", *options, "--json", str(out_json)],
        cwd=REPO, env=env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode == 0, out
    return out, json.loads(out_json.read_text())["runs"]


def test_the_bench_across_hosts_measures_every_route_and_says_each_target(
        tmp_path: Path) -> None:
    out, runs = cluster_bench(tmp_path, "--sizes", "1KiB,64KiB", "--batch", "128",
                              "--transports", "fig11,tcp")
    assert {(r["transport"], r["route"], r["size"]) for r in runs} == {
        (t, r, s) for t in ("fig11", "tcp") for r in ("cross", "local") for s in (1024, 65536)}
    assert all(r["packets"] > 0 and r["S"] > 0 and not r["problems"] for r in runs), runs
    for target in ("cross-host fig11 >= 2x cross-host tcp, 1024 B",
                   "cross-host fig11 CPU per packet within 2x of same-host, 64 KiB"):
        assert re.search(rf"(MET|MISSED): {re.escape(target)}: ", out), out
    assert_names_gone(out, tmp_path)



def test_leases_across_hosts_deliver_every_packet(tmp_path: Path) -> None:
    """A lease on a remote destination is a lease on its proxy ring here: the driver commits
    into it (batch 1: lease.send; batch 16: a run loaned under the lease, filled in place),
    the fabric carries the records over, every one verified (the bench's check)."""
    out, runs = cluster_bench(tmp_path, "--sizes", "1KiB", "--batch", "1,16",
                              "--transports", "fig12-lease")
    assert {(r["route"], r["batch"]) for r in runs} == {
        (route, b) for route in ("cross", "local") for b in (1, 16)}, runs
    assert all(r["packets"] > 0 and not r["problems"] for r in runs), runs
    assert_names_gone(out, tmp_path)


def test_sigterm_during_a_bench_run_ends_it_on_every_host(tmp_path: Path) -> None:
    """SIGTERM while the cluster bench measures its second run (the hosts sleep between two
    looks): both hosts end the run together, without MPI_Abort, and leave nothing."""
    proc = subprocess.Popen(
        [str(MPIEXEC), "-n", "2", sys.executable, "-m", "scripts.cli", "bench", "--config",
         CONFIG, "--sizes", "1KiB", "--batch", "128", "--duration", "4", "--transports",
         "fig11"], cwd=REPO, env=env(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        out = read_until(proc, lambda text: "[1/2] fig11 cross" in text,
                         time.monotonic() + TIMEOUT_S)
        proc.terminate()
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        stop(proc)
    text = words((out + rest).decode())
    assert "[2/2]" not in text, text  # ended inside the second run, not after it
    assert_every_host_ended(proc, text, tmp_path)


def assert_every_host_ended(proc: subprocess.Popen, text: str, tmp_path: Path) -> None:
    """After SIGTERM to mpiexec: each host said how it ended the run (its own signal, or the
    other's ending), none by MPI_Abort, and no host's run record (its names) is left."""
    assert proc.returncode != 0, text
    assert len(ENDED.findall(text)) == 2, text
    assert "Abort(" not in text, text
    assert not [f for f in os.listdir(tmp_path / "runs") if f.endswith(".json")], \
        "a host's run record (its names) was left behind"


def test_sigterm_under_traffic_stops_every_host_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM to mpiexec (as Ctrl-C or a batch system would send) reaches every rank: each
    stops its machine before the job ends, so no host leaves a process or an IPC name."""
    proc = subprocess.Popen(command("--duration", "30"), cwd=REPO, env=env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = traffic_flows(proc, time.monotonic() + TIMEOUT_S)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.terminate()
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        stop(proc)
    text = words((out + rest).decode())
    assert_every_host_ended(proc, text, tmp_path)
    psutil.wait_procs(children, timeout=10)
    assert not [p for p in children if p.is_running() and p.status() != "zombie"]
    east = re.search(r"host east: run (xpm-[0-9a-f]+)", text)
    assert east and not [n for n in os.listdir("/dev/shm") if east.group(1) in n]


def test_hosts_given_different_configs_refuse_before_anything_starts(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text((REPO / CONFIG).read_text().replace("lock_timeout_s = 1.0",
                                                         "lock_timeout_s = 2.0"))
    rank = [sys.executable, "-m", "scripts.cli", "launch", "--config"]
    done = subprocess.run([str(MPIEXEC), "-n", "1", *rank, CONFIG, ":", "-n", "1", *rank,
                           str(other)], cwd=REPO, env=env(tmp_path), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    out = words(done.stdout + done.stderr)
    assert done.returncode != 0
    assert out.count("hosts west read a config that differs from host east's") == 2, out
    assert "Traceback" not in out, out
    runs = tmp_path / "runs"
    assert not runs.exists() or not [f for f in os.listdir(runs) if f.endswith(".json")]


def test_a_forged_proxy_ring_word_is_contained_and_reported(tmp_path: Path) -> None:
    """A word no correct writer could leave (charlie's proxy ring head on east, forged far past
    its tail) stops the pulling of that ring only: it is reported, every other pair's traffic
    is verified, and the run says it is not clean."""
    import mmap

    from adapter import receive_area
    from hypervisor.config import load_config
    from hypervisor.layout import plan_segment

    charlie = plan_segment(load_config(REPO / CONFIG)).by_id()[3]
    proc = subprocess.Popen(command("--duration", "3"), cwd=REPO, env=env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = traffic_flows(proc, time.monotonic() + TIMEOUT_S)
        east = re.search(r"host east: run (xpm-[0-9a-f]+)", words(out.decode()))
        assert east, out.decode()
        with open(f"/dev/shm/{east.group(1)}-mem", "r+b") as f, \
                mmap.mmap(f.fileno(), 0) as segment:
            head = charlie.control + receive_area.HEAD_OFFSET
            for _ in range(50):  # a commit in flight may publish over one write; not over all
                segment[head:head + 8] = (1 << 62).to_bytes(8, "little")
                time.sleep(0.002)  # the attacker's pace, not synchronisation
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        stop(proc)
    text = words((out + rest).decode())
    assert proc.returncode == 1, text
    assert "host west: the proxy ring of network ID 3 on host east is corrupt" in text, text
    assert "NOT clean" in text and "0 corrupt/gap/duplicate" in text, text
    assert_names_gone(text, tmp_path)
