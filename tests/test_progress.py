"""Progress where a person waits: ingest's phases (tqdm bars on standard error, from the command line and from
Python, off on request) and the note before a long first decode."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from conftest import write_store

import daskfeed
from daskfeed.cli import main
from daskfeed.tools import progress as _progress

#: A finished bar: its label, 100%, a full bar, and done == total (in bytes).
DONE = r"{label}\s+100% \|█+\| (\S+)/\1 \["


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype("f4")
    y = np.arange(3000, dtype=np.int64) % 7
    return write_store(tmp_path / "src.zarr", {"x": x, "y": y}, {"x": 250, "y": 3000})


def finished(err: str, label: str) -> bool:
    return re.search(DONE.format(label=label), err) is not None


def test_python_ingest_shows_each_phase_with_progress_true(store, tmp_path, capsys):
    daskfeed.ingest(store, tmp_path / "s.zarr", shuffle=True, seed=0, chunk_length=100, progress=True)
    err = capsys.readouterr().err
    assert finished(err, "scatter") and finished(err, "place"), err
    assert err.index("scatter") < err.index("place")
    daskfeed.ingest(store, tmp_path / "o.zarr", chunk_length=100, progress=True)
    assert finished(capsys.readouterr().err, "ingest")


def test_python_ingest_is_silent_with_progress_false_and_off_a_terminal(store, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DASKFEED_PROGRESS", raising=False)
    daskfeed.ingest(store, tmp_path / "a.zarr", shuffle=True, seed=0, progress=False)
    daskfeed.ingest(store, tmp_path / "b.zarr", shuffle=True, seed=0)  # stderr is no terminal under pytest
    assert capsys.readouterr().err == ""


def test_daskfeed_progress_variable_turns_the_default_on_and_off(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DASKFEED_PROGRESS", "1")
    daskfeed.ingest(store, tmp_path / "on.zarr")
    assert finished(capsys.readouterr().err, "ingest")
    monkeypatch.setenv("DASKFEED_PROGRESS", "0")
    daskfeed.ingest(store, tmp_path / "off.zarr")
    daskfeed.ingest(store, tmp_path / "said.zarr", progress=True)  # an explicit knob wins
    assert finished(capsys.readouterr().err, "ingest")


def test_cli_ingest_shows_progress_unless_quiet(store, tmp_path, capsys):
    assert main(["ingest", store, str(tmp_path / "a.zarr"), "--shuffle", "--chunk-length", "100"]) == 0
    out, err = capsys.readouterr()
    assert finished(err, "scatter") and finished(err, "place")
    assert "%" not in out  # bars go to stderr, the report to stdout
    for flag in ("--quiet", "--no-progress"):
        assert main(["ingest", store, str(tmp_path / f"b{flag}.zarr"), "--shuffle", flag]) == 0
        assert "%" not in capsys.readouterr().err


def test_first_decode_note_says_how_much_is_decoded_once_and_how_long_it_took():
    stream = io.StringIO()
    nbytes = 512 * 2**20
    with _progress.first_decode(nbytes, 2**30, enabled=True, stream=stream):
        pass
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "daskfeed: decoding 512.00 MiB once, before the first batch: it all fits memory_budget=1.00 GiB, so later "
        "epochs decode nothing ..."
    )
    assert re.fullmatch(r"daskfeed: decoded in \d+\.\d s", lines[1])
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt), _progress.first_decode(nbytes, enabled=True, stream=stream):
        raise KeyboardInterrupt
    assert "it all fits the memory budget" in stream.getvalue() and stream.getvalue().endswith("daskfeed: stopped\n")


def test_first_decode_note_is_left_out_for_small_data_or_when_off(monkeypatch):
    monkeypatch.delenv("DASKFEED_PROGRESS", raising=False)
    stream = io.StringIO()
    with _progress.first_decode(_progress.FIRST_DECODE_NOTE_BYTES - 1, 2**30, enabled=True, stream=stream):
        pass
    with _progress.first_decode(2**31, 2**32, enabled=False, stream=stream):
        pass
    with _progress.first_decode(2**31, 2**32, stream=stream):  # a StringIO is no terminal: off by default
        pass
    assert stream.getvalue() == ""


def test_a_loader_notes_the_one_decode_of_data_that_fits_its_budget(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DASKFEED_PROGRESS", "1")
    monkeypatch.setattr(_progress, "FIRST_DECODE_NOTE_BYTES", 1)  # 125 kiB stands in for the GiB that gets a note
    x = np.arange(4000 * 8, dtype="f4").reshape(4000, 8)
    store = write_store(tmp_path / "r.zarr", {"x": x}, {"x": 500})
    with daskfeed.Loader(daskfeed.open_zarr(store)["x"], batch_size=100, seed=0) as loader:
        assert loader.layout.resident
        for epoch in range(3):
            loader.set_epoch(epoch)
            assert sum(len(b) for b in loader) == 4000
    err = capsys.readouterr().err
    assert err.count("daskfeed: decoding") == 1  # once, not every epoch
    assert (
        "daskfeed: decoding 125.00 kiB once, before the first batch: it all fits the memory budget, so later "
        "epochs decode nothing ..."
    ) in err
    assert "daskfeed: decoded in " in err
    many = write_store(tmp_path / "m.zarr", {"x": x}, {"x": 40})  # 100 chunks: served while decoded
    with daskfeed.Loader(daskfeed.open_zarr(many)["x"], batch_size=100, seed=0) as loader:
        assert loader.plan(0).progressive and sum(len(b) for b in loader) == 4000
    err = capsys.readouterr().err
    assert (
        "daskfeed: decoding 125.00 kiB once, while the first epoch is served from the chunks decoded so far: it all "
        "fits the memory budget, so later epochs decode nothing ...\n"
    ) in err
    assert "daskfeed: decoded in " in err
    monkeypatch.setenv("DASKFEED_PROGRESS", "0")
    with daskfeed.Loader(daskfeed.open_zarr(store)["x"], batch_size=100, seed=0) as loader:
        list(loader)
    assert "decoding" not in capsys.readouterr().err
