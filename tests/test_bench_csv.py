"""Result CSVs under failure and concurrency: a cut last line is left out with a warning and never
glued to the next row; two processes recording into one file lose no point; files that are not
result CSVs are refused with a message naming the file and the line."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench import csvstore
from bench.errors import CsvFileError
from bench.results import keys_with_status, load_frame, record
from bench.schema import MODEL_COLUMNS, MODEL_KEY, POINT_METRICS

REPO = Path(__file__).resolve().parent.parent
WRITER = """
import sys
from bench.results import MODEL_COLUMNS, record

host, count, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
blank = dict.fromkeys(MODEL_COLUMNS, "")
for i in range(count):
    point = dict(blank, family="DiG", size="S", patch=2, resolution=16 * (i + 1), batch=1, mode="train",
                 dtype="fp32", gpu="cpu", cpu="test CPU", host=host, status="ok", timestamp=str(i))
    rows = [dict(point, metric=metric) for metric in ("throughput", "peak_mem_rss", "n_params")]
    record(path, rows)
    if i % 10 == 0:  # a re-measured point replaces its rows: the rewrite path, beside the appends
        record(path, rows)
"""


def rows_at(resolution: int) -> list:
    """The rows of one CPU point, as point_rows writes them."""
    point = dict(dict.fromkeys(MODEL_COLUMNS, ""), family="DiG", size="S", patch=2, resolution=resolution,
                 batch=1, mode="train", dtype="fp32", gpu="cpu", cpu="test CPU", host="h", status="ok",
                 backend="gla=torch", median=1.0, p20=0.9, p80=1.1, timestamp="2026-12-01T00:00:00+00:00")
    return [dict(point, metric=metric) for metric in POINT_METRICS["cpu"]]


def test_a_cut_last_line_is_left_out_by_readers_and_dropped_by_the_next_write(tmp_path, capsys):
    path = tmp_path / "models.csv"
    record(path, rows_at(128))
    record(path, rows_at(256))
    whole = path.read_text()
    path.write_text(whole[:-30])  # the last append cut short: no newline at the end
    assert len(load_frame(path)) == 5
    assert "its last line is cut off (an interrupted write?); it is left out" in capsys.readouterr().err
    assert {key[MODEL_KEY.index("resolution")] for key in keys_with_status(path)} == {"128"}  # 256: rerun
    record(path, rows_at(512))
    assert "its last line is cut off (an interrupted write?); dropped it, before writing" in (
        capsys.readouterr().err)
    header, rows = csvstore.read(path)
    assert [row["resolution"] for row in rows] == ["128"] * 3 + ["256"] * 2 + ["512"] * 3
    assert all(len(row) == len(header) for row in rows) and path.read_text().endswith("\n")
    assert capsys.readouterr().err == ""  # repaired: no warning any more


def test_two_processes_recording_at_once_lose_no_point(tmp_path):
    path, count = tmp_path / "models.csv", 150
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, host, str(count), str(path)], cwd=REPO,
                                stderr=subprocess.PIPE, text=True) for host in ("writer-a", "writer-b")]
    errors = [writer.communicate(timeout=300)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], errors
    header, rows = csvstore.read(path)
    assert header == MODEL_COLUMNS and len(rows) == 2 * count * 3
    keys = {csvstore.row_key(row, MODEL_KEY) for row in rows}
    assert len(keys) == 2 * count  # every point of both writers, once
    assert not list(tmp_path.glob("*.tmp"))  # each rewrite's temporary file was renamed into place


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01\x02binary", "holds binary data"),
    ("caf\u00e9,x\n".encode("latin-1"), "is not UTF-8 text"),
    (b"family,size\nDiG,S,extra\n", "line 2: 3 fields where the header has 2"),
])
def test_files_that_are_no_csv_are_named(tmp_path, content, message):
    path = tmp_path / "models.csv"
    path.write_bytes(content)
    with pytest.raises(CsvFileError, match=message):
        csvstore.read(path)
    with pytest.raises(CsvFileError, match=message):
        record(path, rows_at(256))  # never written into


def test_a_foreign_csv_is_never_written_into(tmp_path):
    path = tmp_path / "models.csv"
    path.write_text("name,value\nx,1\n")
    with pytest.raises(CsvFileError, match="is not a models CSV: its header lacks family"):
        record(path, rows_at(256))
    assert path.read_text() == "name,value\nx,1\n"
