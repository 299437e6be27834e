"""The command line's argument checks, help and run-directory errors, in process: nothing is
started (a value refused by the parser exits 2 before any machine exists)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import threading
from importlib import metadata
from pathlib import Path

import pytest

from scripts import cli
from scripts.cli_types import output_path
from scripts.loadgen.options import DEFAULT_BATCHES, BenchOptions


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The parser's one-line complaint about `argv` (it must exit 2, argparse-style)."""
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: xpmove"), err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["launch", "bench", "soak"])
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf", "1e999", "soon"])
def test_duration_must_be_finite_seconds(capsys, command: str, value: str) -> None:
    line = refused(capsys, command, f"--duration={value}")  # "-inf" alone looks like an option
    assert f"argument --duration: '{value}': give a finite number of seconds > 0" in line


@pytest.mark.parametrize(("option", "command"), [("--timeout", "run"),
                                                 ("--kill-every", "soak")])
def test_other_seconds_options_are_checked_alike(capsys, option: str, command: str) -> None:
    assert "'nan': give a finite number of seconds > 0" in refused(capsys, command, option,
                                                                    "nan")


def test_duration_accepted() -> None:
    args = cli.build_parser().parse_args(["launch", "--duration", "1.5"])
    assert args.duration == 1.5 and args.packets is None


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_packets_must_be_at_least_one(capsys, value: str) -> None:
    # --packets 0 used to run the default 500; --packets -5 ran nothing and said "clean"
    assert f"argument --packets: '{value}'" in refused(capsys, "launch", "--packets", value)


@pytest.mark.parametrize(("command", "option"), [("bench", "--packets"),
                                                 ("bench", "--latency-packets"),
                                                 ("soak", "--batch")])
def test_counts_must_be_at_least_one(capsys, command: str, option: str) -> None:
    assert f"argument {option}: '0': give an integer >= 1" in refused(capsys, command, option,
                                                                       "0")


@pytest.mark.parametrize("value", [",", "", " , ", "fig11,,tcp"])
def test_empty_transport_list_refused(capsys, value: str) -> None:
    line = refused(capsys, "bench", "--transports", value)
    assert f"'{value}'" in line
    assert ("known: fig11, fig12, fig12-loan, fig12-lease, fig11-sync, fig12-sync, vswitch, "
            "tcp") in line


def test_unknown_transport_refused_naming_it(capsys) -> None:
    line = refused(capsys, "bench", "--transports", "fig11,udp")
    assert ("unknown 'udp' (known: fig11, fig12, fig12-loan, fig12-lease, fig11-sync, "
            "fig12-sync, vswitch, tcp, zmq, pipe, iceoryx2)") in line


def test_transports_parsed() -> None:
    args = cli.build_parser().parse_args(["bench", "--transports", "tcp, fig11,tcp"])
    assert args.transports == ("tcp", "fig11")
    assert cli.build_parser().parse_args(["bench"]).transports is None  # = DEFAULT_TRANSPORTS


def test_the_default_batches_are_the_bench_options_defaults() -> None:
    """One default for a bench's batches, whether it comes from the command line or from
    BenchOptions (they were 1,128,16384 and (1, 32))."""
    assert cli.build_parser().parse_args(["bench"]).batch == DEFAULT_BATCHES
    assert BenchOptions().batches == DEFAULT_BATCHES == (1, 128, 16384)


def test_batches_and_sizes_parsed() -> None:
    args = cli.build_parser().parse_args(["bench", "--batch", "1,32,1", "--sizes", "64,1KiB"])
    assert args.batch == (1, 32) and args.sizes == (64, 1024)


@pytest.mark.parametrize("option", ["--json", "--plot", "--markdown"])
def test_output_path_in_missing_directory_refused(capsys, option: str) -> None:
    line = refused(capsys, "bench", option, "/no/such/dir/r.json")
    assert f"argument {option}: '/no/such/dir/r.json': directory /no/such/dir does not exist" \
        in line


@pytest.mark.parametrize("name", ["fig14.txt", "fig14", "fig14.png.bak"])
def test_plot_path_without_a_drawable_format_refused(capsys, tmp_path: Path, name: str) -> None:
    """Refused before anything runs: matplotlib refused it only after the whole bench, and
    drew a path with no suffix as PATH.png."""
    line = refused(capsys, "bench", "--plot", str(tmp_path / name))
    assert f"argument --plot: '{tmp_path / name}': give a file name ending in the format to " \
           f"draw in (.png, .svg, .pdf," in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["fig14.png", "FIG14.SVG", "fig14.pdf"])
def test_plot_path_with_a_drawable_format_accepted(tmp_path: Path, name: str) -> None:
    assert cli.build_parser().parse_args(["bench", "--plot", str(tmp_path / name)]).plot \
        == str(tmp_path / name)


def test_output_path_that_is_a_directory_refused(capsys, tmp_path: Path) -> None:
    assert "is a directory" in refused(capsys, "bench", "--json", str(tmp_path))


@pytest.mark.skipif(os.getuid() == 0, reason="root may write anywhere")
def test_output_path_in_read_only_directory_refused(capsys, tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        assert "no permission to write" in refused(capsys, "bench", "--json",
                                                   str(tmp_path / "r.json"))
    finally:
        tmp_path.chmod(0o700)


def test_output_path_on_a_read_only_file_system_refused(capsys) -> None:
    """Permissions say yes to root; the file system says no (sysfs here): tried, refused."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys")
    assert "/sys/kernel/r.json': cannot be written" in refused(capsys, "bench", "--json",
                                                               "/sys/kernel/r.json")


def test_output_path_accepted(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["bench", "--json", str(tmp_path / "r.json")])
    assert args.json == str(tmp_path / "r.json") and args.plot is None
    assert list(tmp_path.iterdir()) == []  # the check left nothing behind
    (tmp_path / "old.json").write_text("kept")
    cli.build_parser().parse_args(["bench", "--json", str(tmp_path / "old.json")])
    assert (tmp_path / "old.json").read_text() == "kept"  # nor changed an existing file


def test_output_path_checked_by_many_at_once(tmp_path: Path) -> None:
    """Every MPI rank of a cluster bench checks the same --json at once: no check may see
    another's trace (a check that created the file for a moment refused the other rank's
    path, "File exists", and left the file behind)."""
    path = str(tmp_path / "r.json")
    refusals: list[str] = []

    def check() -> None:
        for _ in range(2000):
            try:
                output_path(path)
            except argparse.ArgumentTypeError as exc:
                refusals.append(str(exc))

    threads = [threading.Thread(target=check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refusals == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["launch", "soak"])
def test_size_takes_units_like_bench_sizes(capsys, command: str) -> None:
    parse = cli.build_parser().parse_args
    assert parse([command, "--size", "1KiB"]).size == 1024
    assert parse([command, "--size", "4096"]).size == 4096
    assert parse([command]).size == 1024
    assert "size '3x'" in refused(capsys, command, "--size", "3x")


def test_flows_checked(capsys) -> None:
    assert cli.build_parser().parse_args(["launch", "--flows", "fig12"]).flows == ("fig12",)
    assert "flow 'fig13'" in refused(capsys, "launch", "--flows", "fig11,fig13")
    parse = cli.build_parser().parse_args
    assert parse(["launch", "--flows", "fig12-lease,fig11"]).flows == ("fig12-lease", "fig11")
    assert parse(["soak"]).flows == ("fig11", "fig12", "fig12-lease")  # leases soaked too
    assert parse(["soak", "--flows", "fig11,fig11"]).flows == ("fig11",)


def test_version_from_package_metadata(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"xpmove {metadata.version('xpmove')}"


def test_top_level_help_is_for_users() -> None:
    text = cli.build_parser().format_help()
    assert "thin argument parsing" not in text  # the module's developer docstring
    assert "xpmove runs a logically partitioned machine" in text
    for command in ("run", "launch", "soak", "bench", "cleanup"):
        assert re.search(rf"^  xpmove {command}\b", text, re.MULTILINE), command
    assert "/tmp/xpmove-runs-<uid>" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["run", "launch", "soak", "bench", "cleanup"])
def test_every_option_shows_its_default(command: str) -> None:
    parser = subparsers()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        shown = formatter._get_help_string(action) or ""
        assert "default" in shown, f"{command} {action.option_strings}: {shown!r}"
    text = parser.format_help()
    assert f"example:\n  {cli.EXAMPLES[command]}" in text
    assert max(len(line) for line in text.splitlines()) <= 80, text


@pytest.mark.parametrize("command", ["launch", "bench", "soak", "run", "cleanup"])
def test_unusable_run_directory_is_one_line(command: str, tmp_path: Path, capsys,
                                            monkeypatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XPMOVE_RUN_DIR", str(tmp_path / "file"))
    assert cli.main([command]) == 1
    captured = capsys.readouterr()
    assert captured.err == (f"xpmove: run directory {tmp_path / 'file'}: exists and is not a "
                            f"directory\n")
    assert "machine up" not in captured.out


MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def test_bench_without_config_runs_the_32_mib_bench_machine(tmp_path: Path, monkeypatch) -> None:
    """No --config: the bench machine (32 MiB rings, 16 MiB sender area), from any directory
    (it is built in, not read from configs/); launch, run and soak keep the default."""
    monkeypatch.chdir(tmp_path)
    cfg = cli.bench_machine(cli.build_parser().parse_args(["bench"]).config)
    assert [(p.memory_size, p.receive_size) for p in cfg.partitions] == [(48 * MiB, 32 * MiB)] * 4
    assert cli._config(None).partitions[0].receive_size == 4 * MiB


def test_bench_explicit_config_wins() -> None:
    path = str(REPO / "configs" / "default.toml")
    cfg = cli.bench_machine(cli.build_parser().parse_args(["bench", "--config", path]).config)
    assert all(p.receive_size == 4 * MiB for p in cfg.partitions)


def test_bench_help_says_why_its_machine_differs() -> None:
    text = " ".join(subparsers()["bench"].format_help().split())
    for words in ("configs/bench.toml", "32 MiB receive rings", "31 packets of 64 KiB",
                  "same for every transport", "peers keep their own buffers"):
        assert words in text, words


def test_main_leaves_the_signal_handlers_as_it_found_them(tmp_path: Path, monkeypatch) -> None:
    before = [signal.getsignal(sig) for sig in cli.STOP_SIGNALS]
    monkeypatch.setenv("XPMOVE_RUN_DIR", str(tmp_path / "runs"))
    assert cli.main(["cleanup"]) == 0
    assert [signal.getsignal(sig) for sig in cli.STOP_SIGNALS] == before


def test_only_the_first_stop_signal_interrupts() -> None:
    handler = cli.StopOnFirstSignal()
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
    assert handler.stopping
    handler(signal.SIGINT, None)  # the command is stopping: ignored
    handler(signal.SIGTERM, None)
