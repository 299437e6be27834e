"""The documentation cannot silently drift from the code: the tables of docs/protocol.md are
checked against the structs, status codes, ops and constants they describe, and every relative
link in the Markdown a user reads resolves to a file (and heading) of the repository."""

from __future__ import annotations

import ast
import importlib
import re
import struct
from pathlib import Path

import pytest

from adapter import receive_area
from adapter.errors import ERROR_BY_STATUS, Status
from adapter.protocol import Op

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "docs" / "protocol.md"
LINKED_DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
               "benchmarks/README.md"]

# -- Markdown helpers ------------------------------------------------------------------------
FENCE = re.compile(r"^(```|~~~)")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) or ![alt](target), target optionally in <...> and followed by a "title"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline links reduced to their text, lower case,
    everything but letters, digits, spaces, '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text; repeated headings get -1, -2, ... as on
    GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link outside code blocks and inline code."""
    found = []
    for number, line in prose_lines(text):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            found.append((number, m.group(1)))
    return found


def broken_links(text: str, source: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of `text` (the content of `source`) that does not resolve to a file
    of the repository under `root`, or names a heading its target does not have."""
    broken = []
    for number, target in links(text):
        where = f"{source.name}:{number}: {target!r}"
        if not target or SCHEME.match(target):
            continue  # http(s):, mailto:, ...: not ours to check
        path_part, _, anchor = target.partition("#")
        if path_part:
            path = (source.parent / path_part).resolve()
            if not path.is_relative_to(root.resolve()):
                broken.append(f"{where} points outside the repository")
                continue
            if not path.exists():
                broken.append(f"{where}: no such file {path.relative_to(root.resolve())}")
                continue
        else:
            path = source
        if anchor:
            if path.is_dir() or path.suffix.lower() != ".md":
                broken.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(path.read_text() if path != source else text):
                broken.append(f"{where}: no heading #{anchor} in {path.name}")
    return broken


def tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(the nearest heading above, header cells, rows of cells) of every table in `text`."""
    found: list[tuple[str, list[str], list[list[str]]]] = []
    heading, current = "", None
    for _, line in prose_lines(text):
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in CELL_SPLIT.split(stripped.strip("|"))]
            if current is None:
                current = (heading, cells, [])
                found.append(current)
            elif not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current[2].append(cells)
            continue
        current = None
        m = HEADING.match(stripped)
        if m:
            heading = m.group(2)
    return found


def code(cell: str) -> str:
    """The first `inline code` of a cell, or the cell itself without markup."""
    m = re.search(r"`([^`]+)`", cell)
    return m.group(1) if m else cell.strip()


def resolve(dotted: str) -> object:
    """The object named "package.module.NAME" (or "package.module.Class.attr")."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise LookupError(f"{dotted!r} names no module attribute")


@pytest.fixture(scope="module")
def protocol_tables() -> list[tuple[str, list[str], list[list[str]]]]:
    return tables(PROTOCOL.read_text())


def table_with(all_tables, *header: str) -> list[list[str]]:
    """The rows of the one table whose header starts with `header`."""
    matching = [rows for _, cells, rows in all_tables if cells[:len(header)] == list(header)]
    assert len(matching) == 1, f"expected one table with header {header}, found {len(matching)}"
    return matching[0]


# -- docs/protocol.md against the code ---------------------------------------------------------
STRUCT_HEADING = re.compile(r"`([\w.]+)` = `([^`]+)`, (\d+) bytes")
EXPECTED_STRUCTS = {"adapter.protocol.REQUEST_HEADER", "adapter.protocol.MOVE",
                    "adapter.protocol.REPLY_HEADER", "adapter.protocol.RESULT",
                    "adapter.ring.RECORD_HEADER", "adapter.ring.RUN_DESCRIPTOR",
                    "hypervisor.control.LENGTH"}


def test_struct_tables_match_the_struct_formats(protocol_tables):
    checked = set()
    for heading, header, rows in protocol_tables:
        m = STRUCT_HEADING.search(heading)
        if not m or header[:3] != ["offset", "size", "code"]:
            continue  # not a field table (e.g. what a struct's fields mean per op)
        name, fmt, size = m.group(1), m.group(2), int(m.group(3))
        s = resolve(name)
        assert isinstance(s, struct.Struct), name
        assert s.format == fmt, f"{name}: the doc says {fmt!r}, the code has {s.format!r}"
        assert s.size == size, f"{name}: the doc says {size} bytes, the code has {s.size}"
        assert name not in checked, f"{name}: two field tables"
        byte_order, codes = fmt[0], [code(r[2]) for r in rows]
        assert "".join(codes) == fmt[1:], f"{name}: field codes {codes} are not {fmt!r}"
        for i, row in enumerate(rows):
            offset = struct.calcsize(byte_order + "".join(codes[:i]))
            width = struct.calcsize(byte_order + codes[i])
            assert (int(row[0]), int(row[1])) == (offset, width), (
                f"{name} field {row[3]!r}: the doc says offset {row[0]} size {row[1]}, "
                f"the format gives {offset} and {width}")
        checked.add(name)
    assert checked == EXPECTED_STRUCTS, f"struct tables missing: {EXPECTED_STRUCTS - checked}"


def test_every_status_code_is_in_the_table_with_its_number_name_and_exception(protocol_tables):
    rows = table_with(protocol_tables, "code", "name", "exception", "retryable")
    documented = {code(r[1]): r for r in rows}
    assert set(documented) == {s.name for s in Status}, "the status table and Status differ"
    for status in Status:
        row = documented[status.name]
        assert int(row[0]) == status.value, f"{status.name} is {status.value}, doc says {row[0]}"
        cls = ERROR_BY_STATUS.get(status)
        retryable = row[3].split()[0].strip("—").lower()
        if cls is None:
            assert status is Status.OK and code(row[2]) == "—", status
            continue
        assert code(row[2]) == cls.__name__, f"{status.name} raises {cls.__name__}"
        assert retryable == ("yes" if cls.retryable else "no"), (
            f"{status.name}: {cls.__name__}.retryable is {cls.retryable}, doc says {row[3]!r}")


def test_every_op_is_in_the_table_with_its_value(protocol_tables):
    rows = table_with(protocol_tables, "value", "op")
    assert {code(r[1]): int(r[0]) for r in rows} == {op.name: op.value for op in Op}


def test_every_constant_has_the_value_the_doc_states(protocol_tables):
    rows = table_with(protocol_tables, "constant", "value")
    assert len(rows) >= 20
    for row in rows:
        name, value = code(row[0]), ast.literal_eval(code(row[1]))
        assert resolve(name) == value, f"{name} is {resolve(name)!r}, the doc says {value!r}"


CONTROL_WORDS = {
    "head": receive_area.HEAD_OFFSET,
    "pending_head": receive_area.PENDING_OFFSET,
    "pending_source": receive_area.PENDING_OFFSET + 8,
    "pending_first_seq": receive_area.PENDING_OFFSET + 16,
    "holder": receive_area.HOLDER_OFFSET,
    "grant_token": receive_area.GRANT_TOKEN_OFFSET,
    "released": receive_area.RELEASED_OFFSET,
    "writer": receive_area.WRITER_OFFSET,
    "tail": receive_area.TAIL_OFFSET,
    "sleeping": receive_area.SLEEPING_OFFSET,
    "lease": receive_area.LEASE_OFFSET,
    "recall": receive_area.RECALL_OFFSET,
    "wanting": receive_area.WANTING_OFFSET,
}


def test_ring_control_block_offsets(protocol_tables):
    rows = table_with(protocol_tables, "offset", "word", "written by")
    assert {code(r[1]): int(r[0]) for r in rows} == CONTROL_WORDS


# -- links ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LINKED_DOCS)
def test_every_relative_link_resolves(name):
    path = ROOT / name
    assert path.exists(), f"{name} is missing"
    assert broken_links(path.read_text(), path) == []


def test_the_readme_links_to_the_design_and_the_protocol():
    targets = {t.partition("#")[0] for _, t in links((ROOT / "README.md").read_text())}
    assert {"docs/design.md", "docs/protocol.md"} <= targets
    assert "../shared/DESIGN.md" not in (ROOT / "README.md").read_text()


def test_slug_is_githubs():
    assert slug("What the system promises on failure") == "what-the-system-promises-on-failure"
    assert slug("Fig 14: packets per CPU-second") == "fig-14-packets-per-cpu-second"
    assert slug("Driver <-> adapter frames") == "driver---adapter-frames"
    assert slug("The `Port`") == "the-port"
    assert slug("See [the code](x.py) now") == "see-the-code-now"


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A section: here\n")
    source = tmp_path / "README.md"
    text = "\n".join([
        "# Title",
        "## Twice",
        "## Twice",
        "[fine](docs/other.md) and [fine too](docs/other.md#a-section-here)",
        "[local](#title), [repeated](#twice-1), [web](https://example.com/x)",
        "`[in code](nowhere.md)` is not a link",
        "```",
        "[in a block](nowhere.md)",
        "```",
        "[gone](docs/missing.md)",
        "[no heading](docs/other.md#no-such-heading)",
        "[no local heading](#twice-2)",
        "[outside](../elsewhere.md)",
    ])
    broken = broken_links(text, source, tmp_path)
    assert len(broken) == 4, broken
    assert "docs/missing.md" in broken[0] and "no such file" in broken[0]
    assert "no heading #no-such-heading in other.md" in broken[1]
    assert "#twice-2" in broken[2]
    assert "outside the repository" in broken[3]
    assert broken_links("[fine](docs/other.md)", source, tmp_path) == []
