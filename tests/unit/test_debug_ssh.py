"""Debug SSH's rules without a VM: the switch, the operator's allow list and refusals, the
``[debug]`` table, the request field (old requests still decode), the registry's locks across
processes, the dispatcher's deadline, and the forge-neutral key fetch against both fakes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from solstice import config as configmod
from solstice.config import Config, DebugConfig
from solstice.dispatch.systemd import runtime_max
from solstice.errors import ConfigError
from solstice.forges.core.userkeys import KeysUnavailable, fetch_keys, parse_keys, with_debug_access
from solstice.images import Catalog
from solstice.model import DebugAccess, JobRequest, JobSpec, to_dict
from solstice.model import debugssh as policy
from solstice.queue import decode_request, encode_request
from tests.fakes.forgejo import FakeForgejo
from tests.fakes.github import FakeGitHub

ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRlYnVnc3NoLXVuaXQtdGVzdC1rZXktZm9yLXNvbHN0aWNl mona@box"


def request(
    *, switch: str = "on-failure", repository: str = "alice/widgets", access: DebugAccess | None = None
) -> JobRequest:
    env = {policy.SWITCH: switch} if switch else {}
    job = JobSpec(key="build", name="build", runs_on=("debian-12",), steps=(), env=env)
    return JobRequest(job_id="0f6e8f5e-7d3a-4f0e-9a51-0d3c8a1b2c3d", job=job, label="debian-12",
                      repository=repository, debug_access=access)  # fmt: skip


ACCESS = DebugAccess(user="mona", public_keys=(KEY,))
ON = DebugConfig(enabled=True)


def test_the_switch_is_exactly_on_failure() -> None:
    assert policy.requested(request().job)
    assert policy.requested(request(switch=" On-Failure ").job)
    assert not policy.requested(request(switch="").job)
    assert not policy.requested(request(switch="always").job)
    assert not policy.requested(request(switch="true").job)


def test_allow_list_matches_owners_and_repositories_case_insensitively() -> None:
    assert policy.allowed("alice/widgets", ())
    assert policy.allowed("Alice/Widgets", ("alice/*",))
    assert policy.allowed("bob/tool", ("alice/*", "bob/tool"))
    assert not policy.allowed("bob/other", ("alice/*", "bob/tool"))
    assert not policy.allowed("alicex/widgets", ("alice/*",))


def test_refusals_say_why_and_eligibility_needs_everything() -> None:
    assert policy.refusal(request(access=ACCESS), ON) == ""
    assert policy.eligible(request(access=ACCESS), ON)
    assert "not enabled" in policy.refusal(request(access=ACCESS), DebugConfig())
    limited = DebugConfig(enabled=True, allow=("bob/*",))
    assert "allow list does not include alice/widgets" in policy.refusal(request(access=ACCESS), limited)
    assert "named no user" in policy.refusal(request(), ON)
    none = DebugAccess(user="mona", problem="the forge has no user mona")
    assert policy.refusal(request(access=none), ON) == "the forge has no user mona"
    assert "no public SSH keys for mona" in policy.refusal(request(access=DebugAccess(user="mona")), ON)
    assert not policy.eligible(request(switch="", access=ACCESS), ON)


def test_debug_table_defaults_values_and_errors(tmp_path: Path) -> None:
    cfg = Config()
    assert cfg.debug == DebugConfig() and not cfg.debug.enabled and cfg.debug.ttl == 1800
    path = tmp_path / "solstice.toml"
    path.write_text(
        '[debug]\nenabled = true\nttl = 600\naddress = "0.0.0.0"\nhost = "ci.example.org"\n'
        'port_min = 2300\nport_max = 2310\nmax_vms = 3\nallow = ["alice/*", "bob/tool"]\nreport = "held"\n'
    )
    got = configmod.load(path, environ={}).debug
    assert got == DebugConfig(
        True, 600.0, "0.0.0.0", "ci.example.org", 2300, 2310, 3, ("alice/*", "bob/tool"), "held"
    )
    env = configmod.load(path, environ={"SOLSTICE_DEBUG_ENABLED": "false"}).debug
    assert not env.enabled
    for bad, says in [
        ("ttl = 5", "ttl must be"),
        ("port_min = 3000\nport_max = 2000", "port_min..port_max"),
        ("max_vms = 0", "max_vms must be 1 or more"),
        ('report = "later"', "report = 'later'"),
        ('allow = ["alice"]', "not owner/name"),
    ]:
        path.write_text(f"[debug]\n{bad}\n")
        with pytest.raises(ConfigError, match=says):
            configmod.load(path, environ={})


def test_the_request_field_round_trips_and_old_requests_still_decode() -> None:
    req = request(access=ACCESS)
    assert decode_request(encode_request(req)) == req
    old = to_dict(request())
    del old["debug_access"]  # a jobrequest.v1 written before the field existed
    back = decode_request(json.dumps(old).encode())
    assert back.debug_access is None and back.job.env[policy.SWITCH] == "on-failure"


def test_a_debug_jobs_deadline_includes_the_ttl() -> None:
    cfg = Config(debug=DebugConfig(enabled=True, ttl=900))
    image = Catalog({}, Path("/nonexistent")).get("debian-12")
    plain = runtime_max(request(switch="", access=ACCESS), cfg, image)
    assert runtime_max(request(access=ACCESS), cfg, image) == plain + 900
    assert runtime_max(request(access=DebugAccess(user="mona")), cfg, image) == plain  # never kept: no keys
    assert runtime_max(request(access=ACCESS), Config(), image) == plain  # disabled


HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from solstice.model import debugssh as p
    with p.reserve(sys.argv[1], sys.argv[2], 1):
        until, ip = time.time() + 60, "127.0.0.1"
        hold = p.Hold("{job}", sys.argv[2], "mona", "debian", ip, ip, 2201, until, os.getpid())
        with p.registered(sys.argv[1], hold):
            print("held", flush=True)
            time.sleep(60)
    """
)


def test_the_registry_is_shared_between_processes_and_dies_with_its_holder(tmp_path: Path) -> None:
    job = "6a1c5e0f-1111-4222-8333-944455556666"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.replace("{job}", job), str(tmp_path), "alice/widgets"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert policy.held(tmp_path, job)
        (listed,) = policy.holds(tmp_path)
        assert listed.repository == "alice/widgets" and listed.command() == "ssh -p 2201 debian@127.0.0.1"
        with pytest.raises(policy.DebugRefused, match=f"already kept \\(job {job}, until .* UTC\\)"):
            with policy.reserve(tmp_path, "Alice/Widgets", 2):
                pass
        with pytest.raises(policy.DebugRefused, match="limit of 1 debug VM"):
            with policy.reserve(tmp_path, "bob/tool", 1):
                pass
        with policy.reserve(tmp_path, "bob/tool", 2):  # a second slot
            pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert not policy.held(tmp_path, job)  # the lock died with the process
    assert policy.holds(tmp_path) == [] and not policy.hold_file(tmp_path, job).exists()
    with policy.reserve(tmp_path, "alice/widgets", 1):
        pass


def test_parse_keys_keeps_valid_distinct_public_keys_only() -> None:
    rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== x"
    body = [{"key": KEY}, {"key": KEY}, {"key": "ssh-ed25519 AAAA\nevil"}, {"key": "hello"}, {"key": rsa}, 7]
    assert parse_keys(body) == (KEY, rsa)
    with pytest.raises(KeysUnavailable):
        parse_keys({"message": "Not Found"})


def test_keys_from_the_fake_forgejo_and_github_users_apis() -> None:
    with FakeForgejo() as forge, FakeGitHub() as gh:
        forge.user_keys["mona"] = [KEY]
        gh.user_keys["mona"] = [KEY]
        assert fetch_keys(f"{forge.url}/api/v1", "Mona", timeout=5, user_agent="t") == (KEY,)
        assert fetch_keys(f"{gh.url}/api/v3", "mona", timeout=5, user_agent="t") == (KEY,)
        for api in (f"{forge.url}/api/v1", f"{gh.url}/api/v3"):
            with pytest.raises(KeysUnavailable, match="the forge has no user ghost"):
                fetch_keys(api, "ghost", timeout=5, user_agent="t")
        with pytest.raises(KeysUnavailable, match="not a user name"):
            fetch_keys(f"{gh.url}/api/v3", "../admin", timeout=5, user_agent="t")
        # the github context names the API and the user who triggered this attempt
        req = request()
        req = JobRequest(**{**req.__dict__, "contexts": {"github": {
            "api_url": f"{forge.url}/api/v1", "actor": "someone", "triggering_actor": "mona"}}})  # fmt: skip
        assert with_debug_access(req, "http://unused", timeout=5, user_agent="t").debug_access == ACCESS
        plain = request(switch="")
        assert with_debug_access(plain, f"{forge.url}/api/v1", timeout=5, user_agent="t") is plain
    started = time.monotonic()
    gone = with_debug_access(req, "", timeout=2, user_agent="t")  # the forge is gone now
    assert gone.debug_access is not None and "could not be asked" in gone.debug_access.problem
    assert time.monotonic() - started < 10


def solstice(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "solstice", "--config", str(config), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


def test_debug_list_and_kill_show_and_end_a_kept_vm(tmp_path: Path) -> None:
    config = tmp_path / "solstice.toml"
    config.write_text(f'[paths]\nruntime_dir = "{tmp_path / "run"}"\nstate_dir = "{tmp_path / "state"}"\n')
    empty = solstice(config, "debug", "list")
    assert empty.returncode == 0 and "no VMs kept" in empty.stdout, empty.stderr
    job = "7b2d6f10-2222-4333-8444-a55566667777"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.replace("{job}", job), str(tmp_path / "run"), "alice/widgets"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        listed = solstice(config, "debug", "list")
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if job in line)
        assert "alice/widgets" in row and "mona" in row and "ssh -p 2201 debian@127.0.0.1" in row
        assert re.search(r" \d:\d\d |\d\d:\d\d ", row), row  # the time left
        other = solstice(config, "debug", "kill", "8c3e7021-3333-4444-8555-b66677778888")
        assert other.returncode == 1 and "keeps no debug VM on this host" in other.stderr
        bad = solstice(config, "debug", "kill", "nope")
        assert bad.returncode == 1 and "not a job uuid" in bad.stderr
        ended = solstice(config, "debug", "kill", job)
        assert ended.returncode == 0 and f"ended the debug session of job {job}" in ended.stdout, (
            ended.stderr
        )
        assert holder.wait(10) == -signal.SIGTERM
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert not policy.held(tmp_path / "run", job)
