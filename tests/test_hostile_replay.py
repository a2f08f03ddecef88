"""``driftwarden replay`` on hostile files.

A file that cannot be read as its type (missing, a directory, binary junk or Latin-1
as CSV, a CSV row longer than its header, a cell over the CSV limit, not Parquet)
ends the command with one line naming the file and the problem, exit code 2, no
traceback. Anything else is a readable file whose rows are events like any other:
every one is accepted or rejected (``events = accepted + rejected``).
"""

from __future__ import annotations

import copy
import csv
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import files
from connectors.errors import InputFileError
from monitor.cli import main
from monitor.config.schema import parse_config
from monitor.dev.model_synthetic import MODEL_STREAM
from monitor.dev.synthetic import DEMO_STREAM
from monitor.runtime.replay import replay

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HEADER = b"device_id,ts,temperature,humidity,vibration,status\n"
ROW = b"a,1700000000,20,50,1,ok\n"
GOOD = (
    b'{"device_id":"a","ts":1700000000,"temperature":20,"humidity":50,"vibration":1,"status":"ok"}'
)


def _config() -> dict[str, Any]:
    stream = copy.deepcopy(DEMO_STREAM) | {
        "baseline": {"first_events": 10},
        "window": {"events": 40, "step": 10},
    }
    return {
        "kafka": {"bootstrap.servers": "127.0.0.1:9"},
        "dead_letter_topic": "dlq",
        "streams": [stream],
    }


@pytest.fixture(autouse=True)
def _logging() -> Iterator[None]:
    """``main`` points the root logger at the stderr of its call: put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config()))
    return path


UNREADABLE = {
    "binary.csv": (bytes(range(256)) * 4, "not UTF-8 text"),
    "latin1.csv": (HEADER + "é,1700000000,20,50,1,ok\n".encode("latin-1"), "not UTF-8 text"),
    "ragged.csv": (HEADER + b"a,1700000000,20,50,1,ok,extra\n", "line 2 has 7 cells, the header 6"),
    "empty.parquet": (b"", "not a readable Parquet file"),
    "junk.parquet": (b"PAR1" + bytes(range(256)) * 4, "not a readable Parquet file"),
    "notes.txt": (b"hello", "unsupported file type '.txt'"),
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_an_unreadable_file_is_one_line_naming_it_and_exit_code_2(
    name: str, tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, problem = UNREADABLE[name]
    path = tmp_path / name
    path.write_bytes(data)
    assert main(["replay", str(path), "--config", str(config_file)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in err
    assert str(path) in errors[0] and problem in errors[0]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_missing_file_or_a_directory_is_exit_code_2(
    kind: str, tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    if kind == "directory":
        path.mkdir()
    assert main(["replay", str(path), "--config", str(config_file)]) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if " ERROR " in x]
    assert len(line) == 1 and f"{path}: cannot be read: " in line[0]


def test_a_csv_cell_over_the_limit_is_exit_code_2(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.setattr(files, "_CSV_FIELD_LIMIT", 1000)  # stands for 64 MiB
    limit = csv.field_size_limit()
    csv.field_size_limit(1000)
    try:
        path = tmp_path / "huge.csv"
        path.write_bytes(HEADER + b"a" * 5000 + b",1,2,3,4,ok\n")
        assert main(["replay", str(path), "--config", str(config_file)]) == 2
    finally:
        csv.field_size_limit(limit)
    line = [x for x in capsys.readouterr().err.splitlines() if " ERROR " in x]
    assert len(line) == 1 and f"{path}: line 2: field larger than field limit" in line[0]


def test_the_command_itself_prints_no_traceback(tmp_path: Path, config_file: Path) -> None:
    path = tmp_path / "junk.csv"
    path.write_bytes(b"\xff\xfe\x00junk")
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "replay", str(path), "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and str(path) in errors[0] and "Traceback" not in done.stderr


# (file name, content, events, accepted)
READABLE = {
    "empty.jsonl": (b"", 0, 0),
    "empty.csv": (b"", 0, 0),
    "header-only.csv": (HEADER, 0, 0),
    "blank-lines.jsonl": (b"\n\n  \n", 0, 0),
    "bom.csv": (b"\xef\xbb\xbf" + HEADER + ROW, 1, 1),
    "bom.jsonl": (b"\xef\xbb\xbf" + GOOD + b"\n" + GOOD + b"\n", 2, 2),
    "crlf.csv": (HEADER.replace(b"\n", b"\r\n") + ROW.replace(b"\n", b"\r\n"), 1, 1),
    # a short row: the missing cells are nulls (humidity is nullable; status is not)
    "short.csv": (HEADER + b"a,1700000000,20\n", 1, 1),
    # a cell that is not its column's type stays text: a wrong_type value
    "badnum.csv": (HEADER + b"a,1700000000,abc,50,1,ok\n", 1, 1),
    "nul.csv": (HEADER + b"a\x00,1700000000,20,50,1,ok\n", 1, 1),
    "binary.jsonl": (bytes(b for b in range(1, 256) if b != 10) * 8 + b"\n" + GOOD + b"\n", 2, 1),
    "huge.jsonl": (b'{"device_id":"' + b"a" * 2_000_000 + b'"}\n' + GOOD + b"\n", 2, 1),
    "deep.jsonl": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"\n" + GOOD + b"\n", 2, 1),
}


@pytest.mark.parametrize("name", sorted(READABLE))
def test_a_readable_hostile_file_is_replayed_and_accounted(name: str, tmp_path: Path) -> None:
    data, events, accepted = READABLE[name]
    path = tmp_path / name
    path.write_bytes(data)
    report = replay(parse_config(_config(), env={}), path)
    assert report.events == events
    assert report.accepted == accepted
    assert report.accepted + sum(n for _, n in report.rejected) == report.events


def test_hostile_label_files_and_lines_do_not_stop_a_model_replay(tmp_path: Path) -> None:
    stream = copy.deepcopy(MODEL_STREAM)
    stream["baseline"] = {"first_events": 20}
    stream["window"] = {"events": 40, "step": 20}
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
    rows = [
        msgspec.json.encode(
            {"request_id": f"r{i}", "ts": 1e9 + i, "x1": 0.1, "x2": 0.2, "p_default": 0.4}
            | {"model_version": "v1"}
        )
        for i in range(100)
    ]
    inference = tmp_path / "inference.jsonl"
    inference.write_bytes(b"\n".join(rows) + b"\n")
    labels = tmp_path / "labels.jsonl"
    hostile = [
        b'{"request_id":"r1","ts":1000000002,"defaulted":1,"x":' + b"[" * 100_000 + b"]" * 100_000,
        b'{"request_id":"r2","ts":1000000003,"defaulted":"' + b"z" * 5000 + b'"}',
        b'{"request_id":' + b"9" * 5000 + b',"ts":1,"defaulted":1}',
        b"\xff\xfe junk",
        b'{"request_id":null,"ts":null,"defaulted":null}',
        b'{"request_id":"r3","ts":1000000004,"defaulted":1}',
    ]
    labels.write_bytes(b"\n".join(hostile) + b"\n")
    report = replay(config, inference, labels=labels)
    assert report.events == report.accepted == 100
    assert report.model is not None
    model = report.model
    assert model.labels_read == len(hostile)
    rejected = dict(model.labels_rejected)
    assert rejected.get("too_deep") == 1 and rejected.get("string_too_long") == 1
    assert sum(rejected.values()) == len(hostile) - 1  # only r3's label is usable
    bad = tmp_path / "labels.csv"
    bad.write_bytes(b"request_id,ts,defaulted\n\xe9,1,1\n")
    with pytest.raises(InputFileError, match=r"labels\.csv: not UTF-8 text"):
        replay(config, inference, labels=bad)


# -- the reader itself, on arbitrary bytes ---------------------------------------------------


@SETTINGS
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.text(alphabet=st.sampled_from(list('ab,"\n\r\x00\ufeff1.eé ')), max_size=300).map(
            str.encode
        ),
    ),
    suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]),
)
def test_the_reader_yields_json_objects_or_says_why_not(
    data: bytes, suffix: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("f") / f"x{suffix}"
    path.write_bytes(data)
    types = {"a": "float", "b": "int", "e": "bool"}
    problem: str | None = None
    try:
        batches = list(files.read_file_payloads(path, types, event_time="ts", chunk=7))
    except InputFileError as exc:
        problem = str(exc)
    if problem is not None:
        assert problem.startswith(f"{path}: ") and "\n" not in problem
        return
    payloads = [p for b in batches for p in b]
    assert all(len(b) <= 7 for b in batches)
    if suffix != ".jsonl":  # JSONL lines are passed as they are; the decoder judges them
        for p in payloads:
            assert isinstance(msgspec.json.decode(p or b""), dict)


def test_parquet_rows_msgspec_cannot_write_and_empty_tables(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty-table.parquet"
    pq.write_table(pa.table({"device_id": pa.array([], pa.string())}), empty)
    assert list(files.read_file_payloads(empty, {})) == []
    odd = tmp_path / "odd.parquet"
    column = pa.array([[(1, "x")]], pa.map_(pa.int64(), pa.string()))
    pq.write_table(pa.table({"device_id": pa.array(["a"]), "m": column}), odd)
    payloads = [p for b in files.read_file_payloads(odd, {}) for p in b]
    assert len(payloads) == 1 and msgspec.json.decode(payloads[0] or b"")["device_id"] == "a"
