"""`xpmove` as a user runs it, in a pipe: real subprocesses (`python -m scripts.cli`, the
`xpmove` entry point's module), each with its own run registry under tmp_path and a
two-partition machine of 1 MiB partitions, so every test takes a few seconds at most."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60
PARTITION = """[[partition]]
name = "p{n}"
network_id = {n}
memory = "1MiB"
receive_area = "256KiB"
"""
INTERVAL = re.compile(r"^\[\s*[\d.]+-\s*[\d.]+ s\]\s+[\d,]+ (verified|delivered)\s+.*pkt/s "
                      r"errors \d+$", re.MULTILINE)
BENCH_INTERVAL = re.compile(r"^\[[^\]]+\]\s+[\d.]+-\s*[\d.]+\s+s\s+[\d,]+ pkt ", re.MULTILINE)
STOPPING = re.compile(r"interrupted: stopping the machine")


def config(tmp_path: Path, partitions: int = 2) -> Path:
    path = tmp_path / f"machine{partitions}.toml"
    path.write_text("\n".join(PARTITION.format(n=n) for n in range(1, partitions + 1)))
    return path


def env(tmp_path: Path, run_dir: Path | None = None) -> dict[str, str]:
    return {**os.environ, "XPMOVE_RUN_DIR": str(run_dir or tmp_path / "runs")}


def xpmove(tmp_path: Path, *argv: str, run_dir: Path | None = None,
           timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scripts.cli", *argv], cwd=REPO,
                          env=env(tmp_path, run_dir), capture_output=True, text=True,
                          timeout=timeout)


def words(text: str) -> str:
    """The output with its line wrapping undone (the console wraps at 80 columns in a pipe)."""
    return " ".join(text.split())


def stop_if_running(proc: subprocess.Popen) -> None:
    """A test that failed leaves its command running: stop it cleanly (SIGTERM, so no name
    leaks), killed only if it does not stop within TIMEOUT_S."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def interrupt_after_first_interval(tmp_path: Path, *argv: str, twice: bool = False,
                                   interval: re.Pattern[str] = INTERVAL) -> tuple[int, str]:
    """Start `xpmove ARGV`, wait for its first progress line (traffic is flowing), send it
    SIGINT as Ctrl-C would (`twice`: then again and again, from the moment it says it is
    stopping until it exits, so a further Ctrl-C lands in every step of the halt and the
    report, the gaps between them included); (exit code, whole output).

    Interrupted, the command exits 130; a Ctrl-C that lands while the interpreter shuts
    down, after its output is flushed, ends it by SIGINT (Python resets its handlers
    there, and numpy's threads do not block the signal), which a shell shows as 130 too:
    the exit code returned is 130 either way."""
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", *argv], cwd=REPO,
                            env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + TIMEOUT_S

    def read_until(pattern: re.Pattern[str], what: str) -> None:
        nonlocal out
        while not pattern.search(out.decode(errors="replace")):
            assert time.monotonic() < deadline, f"no {what}:\n{out.decode()}"
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            assert chunk, f"output ended before {what}:\n{out.decode()}"
            out += chunk

    try:
        read_until(interval, "progress line")
        proc.send_signal(signal.SIGINT)
        if twice:
            read_until(STOPPING, "'interrupted: stopping' line")
            while proc.poll() is None:  # no pause: each signal is sent once the last is out
                assert time.monotonic() < deadline, f"still running:\n{out.decode()}"
                proc.send_signal(signal.SIGINT)
                ready, _, _ = select.select([proc.stdout], [], [], 0)
                if ready:
                    out += os.read(proc.stdout.fileno(), 65536)
        rest, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        stop_if_running(proc)
    code = 130 if twice and proc.returncode == -signal.SIGINT else proc.returncode
    return code, (out + rest).decode()


def test_launch_duration_reaches_traffic_and_prints_progress_in_a_pipe(tmp_path: Path) -> None:
    proc = xpmove(tmp_path, "launch", "--config", str(config(tmp_path)), "--duration", "1.5",
                  "--size", "1KiB")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    verified = re.search(r"clean: ([\d,]+) of ([\d,]+) accepted packets verified", words(out))
    assert verified, out
    assert int(verified.group(1).replace(",", "")) > 0
    assert verified.group(1) == verified.group(2)
    assert INTERVAL.search(proc.stdout), f"no per-second progress line in a pipe:\n{out}"


@pytest.mark.parametrize(("argv", "complaint"), [
    (("launch", "--packets", "0"), "argument --packets: '0': give an integer >= 1"),
    (("launch", "--packets", "-5"), "argument --packets: '-5': give an integer >= 1"),
    (("launch", "--duration", "nan"), "argument --duration: 'nan': give a finite number"),
    (("launch", "--duration", "-1"), "argument --duration: '-1': give a finite number"),
    (("bench", "--transports", ","), "argument --transports: ',': give a comma list of "
                                     "transports (known: fig11, fig12, fig12-loan, "
                                     "fig12-lease, fig11-sync, fig12-sync, vswitch, tcp, "
                                     "zmq, pipe, iceoryx2)"),
    (("bench", "--json", "/no/such/dir/r.json", "--transports", "fig11", "--sizes", "64",
      "--packets", "5", "--batch", "1", "--no-latency", "--no-single-stream"),
     "argument --json: '/no/such/dir/r.json': directory /no/such/dir does not exist"),
    (("bench", "--pairs", "1:1"), "xpmove bench: --pairs: '1:1' sends to itself"),
    (("bench", "--pairs", "1:9"), "xpmove bench: --pairs: network ID 9 is not in the machine"),
])
def test_bad_values_refused_before_anything_starts(tmp_path: Path, argv: tuple[str, ...],
                                                   complaint: str) -> None:
    proc = xpmove(tmp_path, *argv, "--config", str(config(tmp_path)), timeout=20)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert complaint in proc.stderr
    assert "machine up" not in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["launch", "soak"])
def test_one_partition_refused_for_all_to_all_traffic(tmp_path: Path, command: str) -> None:
    one = config(tmp_path, 1)
    proc = xpmove(tmp_path, command, "--config", str(one), "--duration", "1", timeout=20)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == (f"xpmove {command}: all-to-all traffic needs at least two "
                           f"partitions; {one} has 1\n")
    assert "clean" not in proc.stdout


@pytest.mark.parametrize("command", ["launch", "cleanup"])
@pytest.mark.parametrize("bad", ["file", "file/runs"])
def test_unusable_run_directory_is_one_line(tmp_path: Path, command: str, bad: str) -> None:
    (tmp_path / "file").write_text("")
    run_dir = tmp_path / bad
    proc = xpmove(tmp_path, command, run_dir=run_dir, timeout=20)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.fullmatch(rf"xpmove: run directory {re.escape(str(run_dir))}: [^\n]+\n",
                        proc.stderr), proc.stderr


@pytest.mark.parametrize("twice", [False, True])
def test_interrupted_launch_says_nothing_was_lost(tmp_path: Path, twice: bool) -> None:
    """One Ctrl-C, or a second one while the run halts and reports: the report is whole."""
    code, out = interrupt_after_first_interval(
        tmp_path, "launch", "--config", str(config(tmp_path)), "--duration", "60", twice=twice)
    assert code == 130, out
    text = words(out)
    assert "NOT clean" not in text and "Traceback" not in text
    said = re.search(r"interrupted: ([\d,]+) of ([\d,]+) accepted packets verified before the "
                     r"stop \(packets in flight when stopped are not lost", text)
    assert said, out
    assert int(said.group(1).replace(",", "")) > 0


@pytest.mark.parametrize("twice", [False, True])
def test_interrupted_soak_prints_its_summary(tmp_path: Path, twice: bool) -> None:
    code, out = interrupt_after_first_interval(
        tmp_path, "soak", "--config", str(config(tmp_path)), "--duration", "60",
        "--kill-every", "30", "--size", "1KiB", twice=twice)
    assert code == 130, out
    text = words(out)
    assert "Traceback" not in text
    accepted = re.search(r"accepted │ (\d+) │", text)
    assert accepted and int(accepted.group(1)) > 0, out
    assert re.search(r"interrupted after [\d.]+ s of 60: the summary covers the traffic until "
                     r"the stop", text), out
    assert "passed" not in text and "FAILED" not in text


@pytest.mark.parametrize("twice", [False, True])
def test_interrupted_bench_stops_at_once_and_its_json_says_so(tmp_path: Path,
                                                              twice: bool) -> None:
    """Ctrl-C in a run under traffic: the run cut short is dropped, no floor is measured
    (nothing but the clean-up follows a Ctrl-C), the tables and the JSON are written, and
    the JSON says the bench was interrupted."""
    path = tmp_path / "r.json"
    code, out = interrupt_after_first_interval(
        tmp_path, "bench", "--config", str(config(tmp_path, 4)), "--transports", "fig11,tcp",
        "--sizes", "1KiB", "--batch", "1", "--duration", "60", "--no-latency",
        "--no-single-stream", "--json", str(path), twice=twice, interval=BENCH_INTERVAL)
    assert code == 130, out
    text = words(out)
    assert "Traceback" not in text and "NOT clean" not in text
    assert f"results written to {path}" in text
    results = json.loads(path.read_text())
    assert results["interrupted"] is True
    assert results["runs"] == [] and "floor" not in results
    floor_targets = [t for t in results["targets"] if "floor" in t["name"]]
    assert floor_targets and all(t["verdict"] == "not measured" for t in floor_targets)


def _child_running(proc: subprocess.Popen, argument: str) -> psutil.Process | None:
    """The child of `proc` whose command line has `argument`, if one runs now."""
    for child in psutil.Process(proc.pid).children():
        try:
            if argument in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def interrupt_once_child_runs(tmp_path: Path, argv: list[str],
                              child: str) -> tuple[int, str, psutil.Process]:
    """Start `xpmove ARGV` and send it SIGINT as soon as a child of it whose command line has
    `child` runs (polled against a deadline); (exit code, whole output, that child)."""
    proc = subprocess.Popen([sys.executable, "-m", "scripts.cli", *argv], cwd=REPO,
                            env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while (found := _child_running(proc, child)) is None:
            assert proc.poll() is None, f"{argv[0]} ended before a {child} process was seen"
            assert time.monotonic() < deadline, f"no {child} process"
            time.sleep(0.005)  # polling for the child, against the deadline
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        stop_if_running(proc)
    return proc.returncode, out.decode(), found


def test_a_ctrl_c_while_the_floor_is_measured_keeps_the_runs(tmp_path: Path) -> None:
    """Ctrl-C after the runs, while the floor is measured (a bench's last seconds): the runs
    are reported and written, without a floor, and the floor's process is gone. (It was a
    traceback, and nothing written.)"""
    path = tmp_path / "r.json"
    code, out, floor = interrupt_once_child_runs(
        tmp_path, ["bench", "--config", str(config(tmp_path, 4)), "--transports", "fig11",
                   "--sizes", "1KiB", "--batch", "1", "--duration", "0.5", "--no-latency",
                   "--no-single-stream", "--json", str(path)], "--floors")
    text = words(out)
    assert code == 130, text
    assert "Traceback" not in text and "interrupted: the floor is not measured" in text
    results = json.loads(path.read_text())
    assert results["interrupted"] is True and "floor" not in results
    assert [(r["transport"], r["packet_size"]) for r in results["runs"]] == [("fig11", 1024)]
    assert results["runs"][0]["lost"] == 0 and "S_vs_floor" not in results["runs"][0]
    assert not floor.is_running() or floor.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("argv", [("launch", "--duration", "30"),
                                  ("soak", "--duration", "30", "--kill-every", "10")])
def test_a_ctrl_c_while_the_machine_starts_stops_it_quietly(tmp_path: Path,
                                                              argv: tuple[str, ...]) -> None:
    """Ctrl-C as soon as the adapter is spawned, before the machine is up (the children take
    a few hundred ms to import and say they are ready): the start is undone, exit 130, no
    traceback from any process (the adapter's "ready" met a closed channel; the soak read
    the books of a segment already closed), and nothing left."""
    code, text, _ = interrupt_once_child_runs(
        tmp_path, [*argv, "--config", str(config(tmp_path))], "adapter.server")
    assert code == 130, text
    assert "Traceback" not in text and "Error" not in text, text
    assert "machine up" not in text and "[   0.0-" not in text, text  # stopped in its start
    assert "interrupted" in text, text


def test_a_ctrl_c_while_the_command_loads_exits_130_quietly() -> None:
    """The `xpmove` entry point (pyproject's [project.scripts]) with a Ctrl-C landing while
    the command line is being imported, before its signal handlers exist: exit 130 and not a
    word, as a Ctrl-C at any later moment (the import is made to raise KeyboardInterrupt
    there: a real Ctrl-C cannot be aimed at those 85 ms)."""
    loading = ("import builtins\n"
               "real = builtins.__import__\n"
               "def interrupted(name, *args, **kwargs):\n"
               "    if name == 'scripts.cli':\n"
               "        raise KeyboardInterrupt\n"
               "    return real(name, *args, **kwargs)\n"
               "builtins.__import__ = interrupted\n"
               "from scripts.entry import main\n"
               "raise SystemExit(main())\n")
    proc = subprocess.run([sys.executable, "-c", loading], cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, "", "")


def test_the_installed_command_is_the_entry_point() -> None:
    """pyproject's `xpmove` is scripts/entry.py's main, and the installed command (the
    README's `pip install -e`, beside this interpreter) runs the command line through it."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["xpmove"] == "scripts.entry:main"
    installed = Path(sys.executable).parent / "xpmove"
    assert "scripts.entry" in installed.read_text()
    proc = subprocess.run([str(installed), "--version"], cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0 and "xpmove" in proc.stdout, proc.stdout + proc.stderr
