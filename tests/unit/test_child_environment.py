"""The children's environment: glibc's `rep movsb` threshold out of reach (hypervisor/children.py,
benchmarks/README.md "Copies 4 KiB apart"), and nothing else changed."""

from hypervisor.children import REP_MOVSB_OFF, REP_MOVSB_TUNABLE, child_environment

SET = f"{REP_MOVSB_TUNABLE}={REP_MOVSB_OFF}"


def test_added_when_absent_and_the_rest_kept():
    parent = {"PATH": "/bin", "XPMOVE_RUN_DIR": "/tmp/r"}
    env = child_environment(parent)
    assert env == {**parent, "GLIBC_TUNABLES": SET}
    assert parent == {"PATH": "/bin", "XPMOVE_RUN_DIR": "/tmp/r"}  # not changed in place


def test_other_tunables_kept_in_order():
    env = child_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.rtld.nns=4"})
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:glibc.rtld.nns=4:{SET}"


def test_a_threshold_the_user_set_wins():
    mine = f"glibc.malloc.arena_max=2:{REP_MOVSB_TUNABLE}=4096"
    assert child_environment({"GLIBC_TUNABLES": mine})["GLIBC_TUNABLES"] == mine


def test_empty_entries_are_dropped():
    assert child_environment({"GLIBC_TUNABLES": ":"})["GLIBC_TUNABLES"] == SET
