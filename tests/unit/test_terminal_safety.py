"""Only SGR colour sequences of a step's output reach the operator's terminal (solstice run) and
the job's journal; every other control sequence is shown as a visible escape. The forge's events
keep the output as the step printed it (the forges' log viewers render it as text)."""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from solstice.cli.render import JobSummary, TerminalSink
from solstice.job.runner import JobRun, JobSettings
from solstice.job.sink import ServiceSink
from solstice.model import EventKind, JobEvent, JobRequest, Result
from solstice.model.terminal import safe_line, safe_text
from solstice.workflow import parse_workflow
from tests.fakes.jobsink import Collect
from tests.fakes.localguest import LocalGuest, stand_in_image

#: What a hostile step prints, and what must reach a terminal instead.
HOSTILE = {
    "\x1b]0;owned title\x07": "\\x1b]0;owned title\\x07",  # OSC 0: retitles the terminal
    "\x1b]52;c;aGVsbG8=\x07": "\\x1b]52;c;aGVsbG8=\\x07",  # OSC 52: writes the clipboard
    "\x1b[2J": "\\x1b[2J",  # clear screen
    "\x1b[H\x1b[10;20H": "\\x1b[H\\x1b[10;20H",  # cursor moves
    "\x1bP+q544e\x1b\\": "\\x1bP+q544e\\x1b\\",  # DCS (a terminal query)
    "over\rwrite": "over\\rwrite",  # CR hides what came before it on the line
    "bell\x07 back\x08 del\x7f": "bell\\x07 back\\x08 del\\x7f",
    "\x9b2J 8-bit CSI": "\\x9b2J 8-bit CSI",
    "\x1b": "\\x1b",  # a lone ESC at a line's end
}
#: SGR colours pass unchanged, and so do tabs.
HARMLESS = ["\x1b[31mred\x1b[0m", "\x1b[1;38;5;208mbold orange\x1b[m", "\x1b[38:2:1:2:3mrgb\x1b[0m", "a\tb"]
#: A control sequence that is not SGR: any ESC or C0/C1 control but tab that is not `ESC [ ... m`.
_RAW_CONTROL = re.compile(r"\x1b(?!\[[0-9;:]*m)|[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f-\x9f]")


@pytest.mark.parametrize("text", sorted(HOSTILE))
def test_control_sequences_are_made_visible(text: str) -> None:
    assert safe_text(text) == HOSTILE[text]
    assert not _RAW_CONTROL.search(safe_text(text))


@pytest.mark.parametrize("text", HARMLESS)
def test_sgr_and_tabs_pass(text: str) -> None:
    assert safe_text(text) == text


def test_a_line_cannot_forge_another() -> None:
    assert safe_line("step\n■ success") == "step\\n■ success"
    assert safe_text("first\nsecond") == "first\nsecond"


@pytest.fixture
def runtime() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sol-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _printf(text: str) -> str:
    """A printf command printing ``text`` and a newline, every byte as an octal escape."""
    return "printf '" + "".join(f"\\{b:03o}" for b in text.encode()) + "\\n'"


SCRIPT = "\n".join(_printf(t) for t in HOSTILE)


def _run(runtime: Path, sink: object, name: str = "hostile") -> Result:
    text = (
        "on: push\njobs:\n  j:\n    runs-on: debian-12\n    steps:\n"
        f"      - name: {name}\n        run: |\n"
        + "".join(f"          {line}\n" for line in SCRIPT.splitlines())
        + "          printf '\\033[32mgreen\\033[0m\\n'\n"
        + "          printf 'err \\033]0;t\\007\\n' >&2\n"
    )
    (job,) = parse_workflow(text, "t.yml").jobs
    request = JobRequest(job_id=str(uuid.uuid4()), job=job, label="local", repository="e/t", commit="0" * 40)
    return JobRun(
        request,
        stand_in_image(),
        JobSettings(runtime_dir=runtime),
        sink,  # type: ignore[arg-type]
        boot=LocalGuest.booted,
    ).run()


class Both:
    """A TerminalSink and a ServiceSink's journal fed the same events, and every event kept."""

    def __init__(self) -> None:
        self.terminal = io.StringIO()
        self.journal = io.StringIO()
        self.kept = Collect()
        self.sinks = [
            TerminalSink(JobSummary("j", "local"), self.terminal),
            ServiceSink(JobRequest(job_id=str(uuid.uuid4()), job=None, label="local"), None, self.journal),  # type: ignore[arg-type]
            self.kept,
        ]

    def emit(self, event: JobEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)


def test_hostile_step_output_reaches_terminal_and_journal_only_visible(runtime: Path) -> None:
    both = Both()
    assert _run(runtime, both) is Result.SUCCESS
    both.sinks[1].close()  # type: ignore[attr-defined]
    for out in (both.terminal.getvalue(), both.journal.getvalue()):
        assert not _RAW_CONTROL.search(out), repr(_RAW_CONTROL.search(out))
        for visible in HOSTILE.values():
            assert visible in out
        assert "\x1b[32mgreen\x1b[0m" in out  # colours still colour
        assert "err \\x1b]0;t\\x07" in out
    # The events, which go to the forge, keep what the step printed.
    logs = [e.text for e in both.kept.events if e.kind is EventKind.LOG]
    for raw in HOSTILE:
        assert raw in logs


def test_a_step_name_cannot_forge_a_line(runtime: Path) -> None:
    both = Both()
    _run(runtime, both, name='"x\\n■ forged\\x1b]0;t\\x07"')
    both.sinks[1].close()  # type: ignore[attr-defined]
    for out in (both.terminal.getvalue(), both.journal.getvalue()):
        assert not any(line.startswith("■ forged") for line in out.splitlines())
        assert "x\\n■ forged\\x1b]0;t\\x07" in out
