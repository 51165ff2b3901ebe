"""replace_atomically: the old file survives a writer that fails or a process killed mid-write."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.files import replace_atomically, write_bytes_atomically, write_text_atomically


def test_a_writer_that_fails_leaves_the_old_file_and_no_leftover(tmp_path: Path) -> None:
    path = tmp_path / "last.keras"
    path.write_bytes(b"epoch 1")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"epo")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, half_then_fail)
    assert path.read_bytes() == b"epoch 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.keras"]


def test_the_temporary_file_ends_like_the_target_for_writers_that_read_the_suffix(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"w")

    replace_atomically(tmp_path / "best.weights.h5", write)
    assert seen[0].endswith("best.weights.h5") and seen[0] != "best.weights.h5"
    assert (tmp_path / "best.weights.h5").read_bytes() == b"w"


def test_text_and_bytes_create_missing_folders(tmp_path: Path) -> None:
    write_text_atomically(tmp_path / "a" / "state.json", '{"epoch": 2}')
    write_bytes_atomically(tmp_path / "b" / "c.bin", b"\x00\x01")
    assert (tmp_path / "a" / "state.json").read_text() == '{"epoch": 2}'
    assert (tmp_path / "b" / "c.bin").read_bytes() == b"\x00\x01"


def test_a_process_killed_mid_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "last.keras"
    path.write_bytes(b"epoch 1" * 1000)
    started = tmp_path / "started"
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
from pathlib import Path
from shared.files import replace_atomically

def slow(tmp):
    with open(tmp, "wb") as handle:
        handle.write(b"epoch 2 partial")
        handle.flush()
        Path({str(started)!r}).touch()
        time.sleep(60)

replace_atomically(Path({str(path)!r}), slow)
"""], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    assert path.read_bytes() == b"epoch 1" * 1000
