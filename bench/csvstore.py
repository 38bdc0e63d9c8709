"""Long-format CSV files that several processes may write at once and that survive a cut write.

Every change happens under an exclusive lock on `<file>.lock` (fcntl.flock). New rows are
appended in one write() and flushed to disk; replacing rows rewrites the file into a uniquely
named temporary file beside it, renamed over it afterwards, so a reader sees the old file or the
new one, never half of one. A last line without its newline is a write that was cut (a killed
process, a full disk): readers ignore it with a warning, writers drop it with the same warning
before they write. Nothing here needs torch or pandas.
"""

import contextlib
import csv
import fcntl
import io
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import CsvFileError

_WARNED: set = set()


def warn(message: str) -> None:
    """Print a warning on stderr, once per process (a file is read several times per command)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def locked(path: Path, shared: bool = False):
    """Hold the lock of `path` (shared: readers only). A reader in a directory it cannot write
    reads without the lock: nobody can write there either."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a")
    except OSError:
        if not shared:
            raise
        handle = None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            handle.close()  # closing releases the lock


def parse(path: Path, repair: bool = False) -> tuple[list[str], list[dict], bool]:
    """(header, rows as dicts of strings, whether a cut last line was left out) of a CSV file;
    `repair`: the caller rewrites the file without that line (the warning says so).

    ([], [], False) for a missing or empty file. CsvFileError for a binary file, text that is not
    UTF-8, or a row whose field count is not the header's.
    """
    path = Path(path)
    if not path.exists():
        return [], [], False
    if path.is_dir():
        raise CsvFileError(f"{path} is a directory, not a CSV file.")
    data = path.read_bytes()
    if b"\0" in data:
        raise CsvFileError(f"{path} is not a CSV file: it holds binary data (NUL bytes).")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CsvFileError(f"{path} is not a CSV file: byte {error.start} is not UTF-8 text.") from None
    cut = bool(text) and not text.endswith("\n")
    if cut:
        text, _, tail = text.rpartition("\n")
        done = "dropped it, before writing" if repair else "it is left out"
        warn(f"{path}: its last line is cut off (an interrupted write?); {done}: {tail[:60]!r}")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    rows = []
    for fields in reader:
        if not fields:
            continue
        if len(fields) != len(header):
            raise CsvFileError(f"{path} line {reader.line_num}: {len(fields)} fields where the header "
                               f"has {len(header)}; not a CSV this tool wrote.")
        rows.append(dict(zip(header, fields)))
    return header, rows, cut


def read(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows) under the shared lock; see parse()."""
    path = Path(path)
    with locked(path, shared=True):
        header, rows, _ = parse(path)
    return header, rows


def require_columns(path: Path, header: Sequence[str], required: Sequence[str], kind: str) -> None:
    """CsvFileError unless every required column is in the header."""
    if not header:
        raise CsvFileError(f"{path} is empty: no header, no rows.")
    missing = [column for column in required if column not in header]
    if missing:
        raise CsvFileError(f"{path} is not a {kind} CSV: its header lacks {', '.join(missing[:5])}"
                           + (" ..." if len(missing) > 5 else "") + ".")


def to_text(columns: Sequence[str], rows: Iterable[dict], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def replace_file(path: Path, text: str) -> None:
    """Write `text` to a unique temporary file beside `path`, flush it to disk, rename it over `path`."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    """Write the whole file atomically, under the lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        replace_file(path, to_text(columns, rows, header=True))


def row_key(row: dict, key: Sequence[str], defaults: dict | None = None) -> tuple:
    """The row's values of the key columns, as strings; a column the row lacks takes its default."""
    defaults = defaults or {}
    return tuple(str(row.get(column, defaults.get(column, ""))) for column in key)


def record(path: Path, rows: list[dict], columns: Sequence[str], key: Sequence[str],
           defaults: dict | None = None, required: Sequence[str] = (), kind: str = "results") -> None:
    """Add rows under the lock: appended in one write if their keys are new and the file is whole,
    else the file is rewritten with the rows of those keys replaced (a cut last line dropped).

    CsvFileError if an existing file lacks a `required` column (it is some other CSV).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        header, existing, cut = parse(path, repair=True)
        if header:
            require_columns(path, header, required, kind)
        new_keys = {row_key(row, key, defaults) for row in rows}
        clash = any(row_key(row, key, defaults) in new_keys for row in existing)
        if header == list(columns) and not cut and not clash:
            with path.open("a", newline="") as out:
                out.write(to_text(columns, rows, header=False))
                out.flush()
                os.fsync(out.fileno())
            return
        # Rows from before a key column existed get its default written out, so that they keep
        # their key after the rewrite (an empty cell would be another key).
        kept = [{**(defaults or {}), **row} for row in existing
                if row_key(row, key, defaults) not in new_keys]
        all_columns = list(columns) + [c for c in header if c not in columns]
        replace_file(path, to_text(all_columns, kept + rows, header=True))


def merge(paths: Sequence[Path], out: Path, key: Sequence[str], defaults: dict | None = None) -> int:
    """Merge CSVs into `out`; for a key in several, the point with the latest timestamp wins (ties:
    the file named last); a key column a file lacks is written as its default. Returns the number
    of rows written."""
    groups: dict[tuple, list[dict]] = {}
    columns: list[str] = []
    for path in paths:
        header, rows = read(path)
        columns += [c for c in header if c not in columns]
        by_key: dict[tuple, list[dict]] = {}
        for row in rows:
            by_key.setdefault(row_key(row, key, defaults), []).append(row)
        for point_key, point in by_key.items():
            if point_key not in groups or point[0]["timestamp"] >= groups[point_key][0]["timestamp"]:
                groups[point_key] = point
    merged = [{**(defaults or {}), **row} for point in groups.values() for row in point]
    write(out, columns, merged)
    return len(merged)
