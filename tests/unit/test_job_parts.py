"""The job process's pure parts: masking, workflow commands, runner files, step commands, packing."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from solstice.errors import WorkflowError
from solstice.job import checkout, filecmds, script
from solstice.job.commands import CommandState, parse
from solstice.job.events import Emitter, LineSplitter
from solstice.job.mask import Masker
from solstice.model import EventKind, JobEvent, Outcome, Result


class Sink:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    def emit(self, event: JobEvent) -> None:
        self.events.append(event)


def test_masker_masks_values_and_each_line_of_multiline_secrets() -> None:
    m = Masker(["topsecret", "line-a\nline-b"])
    assert m.apply("x topsecret y") == "x *** y"
    assert m.apply("line-b alone") == "*** alone"
    m.add("later")
    assert m.apply("later topsecret") == "*** ***"


def test_masker_prefers_the_longest_value() -> None:
    m = Masker(["abc", "abcdef"])
    assert m.apply("abcdef") == "***"


def test_emitter_numbers_masks_and_orders() -> None:
    sink = Sink()
    em = Emitter("job", sink, Masker(["pw123"]))
    em.job_started("j")
    em.log("the pw123 here", step=1)
    em.step_finished(1, Outcome.FAILURE, Outcome.SUCCESS, message="pw123 failed", outputs={"o": "pw123"})
    em.job_finished(Result.SUCCESS)
    assert [e.seq for e in sink.events] == [1, 2, 3, 4]
    assert sink.events[1].text == "the *** here"
    assert sink.events[2].message == "*** failed" and sink.events[2].outputs == {"o": "***"}
    assert sink.events[3].kind is EventKind.JOB_FINISHED


def test_line_splitter_handles_partial_lines_crlf_and_long_lines() -> None:
    s = LineSplitter(limit=8)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\r\nde") == ["abc"]
    assert s.feed(b"fghijklmno") == ["defghijk"]
    assert s.flush() == ["lmno"]
    assert s.flush() == []


def test_parse_workflow_commands() -> None:
    cmd = parse("::error file=a.c,line=3::bad%0Athing")
    assert cmd is not None
    assert (
        cmd.command == "error" and cmd.params == {"file": "a.c", "line": "3"} and cmd.value == "bad\nthing"
    )
    add = parse("::add-mask::v")
    assert add is not None and add.value == "v"
    assert parse("plain line") is None
    assert parse(":: not a command") is None


def test_stop_commands_suspends_interpretation() -> None:
    st = CommandState()
    assert st.interpret("::stop-commands::tok") is not None
    assert st.interpret("::add-mask::hidden") is None
    assert st.interpret("::tok::") is None
    after = st.interpret("::add-mask::x")
    assert after is not None and after.command == "add-mask"


def test_runner_file_syntax() -> None:
    text = "A=1\nB=x=y\nM<<EOF\nl1\nl2\nEOF\n\nC=\n"
    assert filecmds.parse_key_values(text, "GITHUB_ENV") == {"A": "1", "B": "x=y", "M": "l1\nl2", "C": ""}
    with pytest.raises(filecmds.FileCommandError, match="closing delimiter"):
        filecmds.parse_key_values("M<<EOF\nx\n", "GITHUB_OUTPUT")
    with pytest.raises(filecmds.FileCommandError, match="invalid line"):
        filecmds.parse_key_values("novalue\n", "GITHUB_ENV")
    assert filecmds.parse_path("/a\n\n /b \n") == ["/a", "/b"]


@pytest.mark.parametrize(
    ("shell", "bash", "template"),
    [
        (None, "/bin/bash", "/bin/bash -e {0}"),
        (None, "", "sh -e {0}"),
        ("bash", "/usr/bin/bash", "/usr/bin/bash --noprofile --norc -eo pipefail {0}"),
        ("sh", "/bin/bash", "sh -e {0}"),
        ("python", "/bin/bash", "python3 {0}"),
        ("perl {0}", "/bin/bash", "perl {0}"),
    ],
)
def test_resolve_shell(shell: str | None, bash: str, template: str) -> None:
    assert script.resolve_shell(shell, bash).template == template


def test_resolve_shell_errors() -> None:
    with pytest.raises(WorkflowError, match="not supported"):
        script.resolve_shell("pwsh", "/bin/bash")
    with pytest.raises(WorkflowError, match="bash is not installed"):
        script.resolve_shell("bash", "")


def test_env_file_quotes_values_and_skips_bad_names(tmp_path: Path) -> None:
    text, skipped = script.env_file({"A": "it's $HOME `x`", "B-C": "1", "E": "l1\nl2"}, ["/p1", "/p2"])
    assert skipped == ["B-C"]
    f = tmp_path / "env"
    f.write_text(text)
    out = subprocess.run(
        ["sh", "-c", f'PATH=/usr/bin:/bin; . {f}; printf "%s|%s|%s" "$A" "$E" "$PATH"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "it's $HOME `x`|l1\nl2|/p1:/p2:/usr/bin:/bin"


def test_step_command_runs_script_in_workdir_and_records_pid(tmp_path: Path) -> None:
    (tmp_path / "wd").mkdir()
    (tmp_path / "s.sh").write_text('echo "$X in $(pwd)"\n')
    (tmp_path / "env").write_text("export X=hi\n")
    cmd = script.step_command(
        shell=script.resolve_shell("sh", ""),
        script=str(tmp_path / "s.sh"),
        envfile=str(tmp_path / "env"),
        pidfile=str(tmp_path / "pid"),
        workdir=str(tmp_path / "wd"),
    )
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
    assert out == f"hi in {tmp_path / 'wd'}\n"
    assert not (tmp_path / "env").exists()  # the secrets file is gone before the script runs
    assert (tmp_path / "pid").read_text().strip().isdigit()


def test_step_command_reports_missing_workdir(tmp_path: Path) -> None:
    cmd = script.step_command(
        shell=script.resolve_shell("sh", ""),
        script="/nonexistent.sh",
        envfile=str(tmp_path / "env"),
        pidfile=str(tmp_path / "pid"),
        workdir=str(tmp_path / "missing"),
    )
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_pack_tree_uses_git_files_and_keeps_modes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("ignored.txt\n")
    (repo / "ignored.txt").write_text("no")
    (repo / "tracked.sh").write_text("#!/bin/sh\n")
    (repo / "tracked.sh").chmod(0o755)
    (repo / "dir").mkdir()
    (repo / "dir" / "new.txt").write_text("untracked but not ignored")
    subprocess.run(["git", "-C", str(repo), "add", "tracked.sh", ".gitignore"], check=True)
    archive = checkout.pack_tree(repo)
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        names = sorted(tar.getnames())
        mode = tar.getmember("tracked.sh").mode
    assert names == [".gitignore", "dir/new.txt", "tracked.sh"]
    assert mode & 0o111
    assert archive.files == 3


def test_pack_tree_plain_directory_skips_dot_git(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("x")
    archive = checkout.pack_tree(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(archive.data)) as tar:
        assert tar.getnames() == ["a.txt"]
    # Plain ustar whenever names fit, so any POSIX tar can read it.
    assert archive.data[257:263] == b"ustar\x00"
