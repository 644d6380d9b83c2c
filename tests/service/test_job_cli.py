"""``solstice job run UUID`` (the job unit's main process) and ``solstice secrets init``, without a VM.

The job process's contract (solstice.dispatch.contract): where it reads its request, the events it
sends for a job that cannot start its VM, and its exit status. A real VM job through the whole
pipeline is in test_submit.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.pipeline import Poller, make_request, short_dir, write_config

from solstice import config as configmod
from solstice.config import BrokerConfig
from solstice.dispatch.contract import (
    EXIT_ERROR,
    EXIT_USAGE,
    request_file,
    write_request,
)
from solstice.model import EventKind, Result
from solstice.queue import encode_request
from solstice.secrets import load_key, seal, write_new_key

ROOT = Path(__file__).resolve().parents[2]
SECRET = "canary-4f1d2e-do-not-print"
#: What tells the job where its host-side log is (systemd's, the process spawner's).
HOST_LOG_ENV = ("INVOCATION_ID", "JOURNAL_STREAM", "SOLSTICE_JOB_LOG")


@pytest.fixture
def setup(broker_cfg: BrokerConfig) -> Iterator[tuple[Path, Poller]]:
    runtime = short_dir()
    config_file = runtime / "solstice.toml"
    write_config(config_file, broker_cfg, "postgresql://unused@127.0.0.1:1/none", runtime)
    poller = Poller(configmod.load(config_file, environ={}))
    yield config_file, poller
    poller.close()
    subprocess.run(["rm", "-rf", str(runtime)], check=False)


def job_run(
    config_file: Path, job_id: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "solstice", "--config", str(config_file), "job", "run", job_id, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k not in HOST_LOG_ENV}, **(env or {})},
    )


def test_usage_errors_exit_2_without_events(setup: tuple[Path, Poller]) -> None:
    config_file, _ = setup
    job_id = str(uuid.uuid4())
    proc = job_run(config_file, job_id)  # no request anywhere
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert f"requests/{job_id}.json" in proc.stderr
    assert job_run(config_file, "not-a-uuid").returncode == EXIT_USAGE
    other = make_request("ok")
    runtime = Path(configmod.load(config_file, environ={}).paths.runtime_dir)
    write_request(runtime, other)
    proc = job_run(config_file, job_id, "--request", str(request_file(runtime, other.job_id)))
    assert proc.returncode == EXIT_USAGE and "not " + job_id in proc.stderr
    bad = runtime / "bad.json"
    bad.write_text('{"schema_version": "jobrequest.v9"}')
    proc = job_run(config_file, job_id, "--request", str(bad))
    assert proc.returncode == EXIT_USAGE and "unknown schema_version" in proc.stderr


def test_a_job_that_cannot_start_reports_an_error_event_and_exits_4(setup: tuple[Path, Poller]) -> None:
    config_file, poller = setup
    # From the systemd credential, as the dispatcher passes it (LoadCredential=job-request:...).
    request = make_request("ok", label="no-such-image")
    creds = short_dir("creds-")
    (creds / "job-request").write_bytes(encode_request(request))
    proc = job_run(config_file, request.job_id, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert proc.returncode == EXIT_ERROR, proc.stderr
    poller.wait_final(request.job_id)
    events = poller.events[request.job_id]
    assert [e.kind for e in events] == [EventKind.JOB_STARTED, EventKind.LOG, EventKind.JOB_FINISHED]
    assert events[-1].result is Result.ERROR and "no image for label 'no-such-image'" in events[-1].message
    # The journal (stdout) has the same, as lines for humans.
    assert "▶ test ok on no-such-image" in proc.stdout and "■ error: no image" in proc.stdout


def test_the_first_log_line_says_where_the_host_log_is(setup: tuple[Path, Poller]) -> None:
    config_file, poller = setup
    runtime = Path(configmod.load(config_file, environ={}).paths.runtime_dir)
    for env, where in (
        ({"SOLSTICE_JOB_LOG": "/somewhere/job.log"}, "/somewhere/job.log"),  # the process spawner
        ({"INVOCATION_ID": "0123abcd"}, "journalctl -u solstice-job@"),  # systemd
    ):
        request = make_request("ok", label="no-such-image")
        write_request(runtime, request)
        proc = job_run(config_file, request.job_id, env=env)
        assert proc.returncode == EXIT_ERROR, proc.stderr
        poller.wait_final(request.job_id)
        logs = [e for e in poller.events[request.job_id] if e.kind is EventKind.LOG]
        assert logs[0].text.startswith("Host-side log: " + where), logs[0].text
        assert request.job_id in logs[0].text or "job.log" in logs[0].text


def test_secrets_are_opened_with_the_key_and_a_wrong_key_is_an_error(
    setup: tuple[Path, Poller], tmp_path: Path
) -> None:
    config_file, poller = setup
    key_file = tmp_path / "secrets.key"
    write_new_key(key_file)
    other_key = tmp_path / "other.key"
    write_new_key(other_key)
    runtime = Path(configmod.load(config_file, environ={}).paths.runtime_dir)
    # Sealed with another key than the job host's: an infrastructure error, secret never shown.
    request = seal(make_request("ok", secrets={"TOKEN": SECRET}), load_key(other_key))
    write_request(runtime, request)
    proc = job_run(config_file, request.job_id, env={"SOLSTICE_SECRETS_KEY_FILE": str(key_file)})
    assert proc.returncode == EXIT_ERROR, proc.stderr
    final = poller.wait_final(request.job_id)
    assert final.result is Result.ERROR and "sealed with another key" in final.message
    # Opened: the job goes on to its image (the test state_dir has none: error at the image check).
    request = seal(make_request("ok", secrets={"TOKEN": SECRET}), load_key(key_file))
    write_request(runtime, request)
    proc = job_run(config_file, request.job_id, env={"SOLSTICE_SECRETS_KEY_FILE": str(key_file)})
    assert proc.returncode == EXIT_ERROR
    final = poller.wait_final(request.job_id)
    assert "debian-12" in final.message and "does not exist" in final.message
    text = proc.stdout + proc.stderr + "".join(repr(e) for e in poller.events[request.job_id])
    assert SECRET not in text


def test_without_reply_to_the_job_only_writes_its_journal(setup: tuple[Path, Poller]) -> None:
    config_file, poller = setup
    request = make_request("ok", reply_to="")
    runtime = Path(configmod.load(config_file, environ={}).paths.runtime_dir)
    write_request(runtime, request)
    proc = job_run(config_file, request.job_id)
    assert proc.returncode == EXIT_ERROR  # no image in the test state_dir
    assert "▶ test ok on debian-12" in proc.stdout and "■ error" in proc.stdout
    poller.pump(0.5)
    assert request.job_id not in poller.events


def test_secrets_init_writes_a_private_key_once(tmp_path: Path) -> None:
    key_file = tmp_path / "etc" / "secrets.key"
    argv = [sys.executable, "-m", "solstice", "secrets", "init", "--key-file", str(key_file)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    load_key(key_file)
    before = key_file.read_bytes()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 1 and "exists already" in proc.stderr
    assert key_file.read_bytes() == before
