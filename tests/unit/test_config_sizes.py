"""hypervisor.config.parse_size: the sizes a config may write ("8MiB", 65536, ...), and any
other value refused naming its key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisor.config import MAX_TOTAL_MEMORY, PAGE_SIZE, ConfigError, parse_size

MiB = 1024 * 1024


# --- sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8MiB", 8388608),
        (65536, 65536),
        ("512KiB", 524288),
        ("1GiB", 1024**3),
        ("4096B", 4096),
        ("4096", 4096),
        (" 2 MiB ", 2 * MiB),
        (0, 0),
    ],
)
def test_parse_size_accepts(value: object, expected: int) -> None:
    assert parse_size(value, "k") == expected


@pytest.mark.parametrize(
    "value",
    [
        "1.5MiB",
        True,
        False,
        "-4KiB",
        -4096,
        4096.0,
        "8mib",
        "8MB",
        "8 M",
        "",
        "MiB",
        None,
        [4096],
        "0x1000",
        "٤٠٩٦",
        "1_000",
    ],
)
def test_parse_size_rejects_and_names_key(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, "partition[3].memory")
    msg = str(info.value)
    assert msg.startswith("partition[3].memory: ")
    assert repr(value) in msg


@given(st.integers(min_value=0, max_value=MAX_TOTAL_MEMORY // PAGE_SIZE))
def test_page_multiples_round_trip(pages: int) -> None:
    size = pages * PAGE_SIZE
    assert parse_size(size, "k") == size
    assert parse_size(f"{size}B", "k") == size
    assert parse_size(f"{size // 1024}KiB", "k") == size


@given(
    st.one_of(
        st.text(),
        st.none(),
        st.booleans(),
        st.floats(),
        st.binary(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
        st.integers(),
        st.complex_numbers(),
    )
)
def test_parse_size_only_ever_raises_config_error(value: object) -> None:
    try:
        result = parse_size(value, "k")
    except ConfigError as e:
        assert str(e).startswith("k: ")
    else:
        assert isinstance(result, int) and not isinstance(result, bool) and result >= 0
