"""The serial console as the job shows it: cleaned, bounded, followed live; and the KVM check."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from solstice.vm.console import LINE_LIMIT, ConsoleFollower, clean, read_tail
from solstice.vm.machine import KVMUnavailable, check_kvm


def test_clean_removes_escapes_and_control_characters() -> None:
    raw = b"\x1b[0;32m  OK  \x1b[0m] Started\r \x1b]0;title\x07x\x00\x1b(B\x08y\tz"
    text = clean(raw)
    assert "\x1b" not in text and "\r" not in text and "\x00" not in text and "\x08" not in text
    assert text.startswith("  OK  ] Started")
    assert text.endswith("y    z")


def test_read_tail(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(b"line %d\r\n" % i for i in range(100)) + b"\x1b[1mlast\x1b[0m")
    assert read_tail(log, 3).splitlines() == ["line 98", "line 99", "last"]
    assert read_tail(tmp_path / "missing") == ""


def test_follower_streams_lines_as_they_are_written_and_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    lines: list[str] = []
    got_first = threading.Event()

    def on_line(line: str) -> None:
        lines.append(line)
        got_first.set()

    follower = ConsoleFollower(log, on_line, max_lines=5, interval=0.01)
    follower.start()  # before the file exists, as when QEMU has not started yet
    time.sleep(0.05)
    with log.open("wb") as fh:
        fh.write(b"\x1b[2Jfirst\r\nsec")
        fh.flush()
        assert got_first.wait(5)
        fh.write(b"ond\n" + b"x" * (LINE_LIMIT * 3) + b"\n" + b"".join(b"n%d\n" % i for i in range(50)))
        fh.write(b"partial at the end")
    follower.stop()
    assert lines[0] == "first" and lines[1] == "second"
    assert all(len(line) <= LINE_LIMIT for line in lines)
    assert len(lines) == 6
    assert lines[-1] == "(console output after 5 lines left out)"


def test_kvm_check_fails_loudly_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(KVMUnavailable) as exc:
        check_kvm(tmp_path / "kvm")
    assert "does not exist" in str(exc.value)
    assert exc.value.hint and 'accel = "tcg"' in exc.value.hint and "group kvm" in exc.value.hint
    unreadable = tmp_path / "dir-not-device"
    unreadable.mkdir()
    with pytest.raises(KVMUnavailable) as exc:
        check_kvm(unreadable)  # exists, but cannot be opened read-write
    assert "cannot be opened" in str(exc.value)
    if os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK):
        check_kvm()  # the real device, where this host has one
