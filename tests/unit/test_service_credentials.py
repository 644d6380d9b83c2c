"""Service credentials (the broker's and the database's URLs, the secrets key, forge tokens) come from
files or systemd credentials, never from a command line (docs/security.md "Service credentials")."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from solstice import config
from solstice.dispatch.systemd import SystemdSpawner
from solstice.errors import ConfigError
from solstice.model import JobRequest, JobSpec

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "units"
TEMPLATE = (UNITS / "solstice-job@.service").read_text()
PASSWORD = "pw-5e1f0c"  # a password that must appear on no command line
BROKER = f"amqp://solstice:{PASSWORD}@broker.example:5672/%2F"
DATABASE = f"postgresql://solstice:{PASSWORD}@db.example/solstice"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_urls_from_url_file(tmp_path: Path) -> None:
    broker = write(tmp_path / "broker-url", BROKER + "\n")
    database = write(tmp_path / "database-url", DATABASE + "\n")
    toml = write(
        tmp_path / "s.toml",
        f'[broker]\nurl_file = "{broker}"\n[database]\nurl_file = "{database}"\n',
        0o640,
    )
    cfg = config.load(toml, environ={})
    assert cfg.broker.url == BROKER and cfg.database.url == DATABASE
    assert PASSWORD not in toml.read_text()
    # the environment override names the file too, not the URL
    cfg = config.load(toml, environ={"SOLSTICE_BROKER_URL_FILE": str(database)})
    assert cfg.broker.url == DATABASE


def test_systemd_credentials_win_over_the_file_and_the_url(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "broker-url", BROKER)
    write(creds / "database-url", DATABASE)
    other = write(tmp_path / "other", "amqp://guest:guest@elsewhere/%2F")
    toml = write(
        tmp_path / "s.toml", f'[broker]\nurl_file = "{other}"\n[database]\nurl = "postgresql:///x"\n'
    )
    cfg = config.load(toml, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.broker.url == BROKER and cfg.database.url == DATABASE
    # without the credentials: the file, then the plain url
    cfg = config.load(toml, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "none")})
    assert cfg.broker.url == "amqp://guest:guest@elsewhere/%2F"
    assert cfg.database.url == "postgresql:///x"


def test_unreadable_or_malformed_url_files_are_clear_errors(tmp_path: Path) -> None:
    toml = write(tmp_path / "s.toml", f'[broker]\nurl_file = "{tmp_path}/missing"\n')
    with pytest.raises(ConfigError, match=r"\[broker\] url_file = .*missing.*cannot read"):
        config.load(toml, environ={})
    two = write(tmp_path / "two", "amqp://a/%2F\namqp://b/%2F\n")
    toml = write(tmp_path / "s.toml", f'[database]\nurl_file = "{two}"\n')
    with pytest.raises(ConfigError, match="one URL on one line"):
        config.load(toml, environ={})
    empty = write(tmp_path / "empty", "\n")
    toml = write(tmp_path / "s.toml", f'[database]\nurl_file = "{empty}"\n')
    with pytest.raises(ConfigError, match="one URL on one line"):
        config.load(toml, environ={})


def unit_settings(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key, value))
    return out


SECRET_ON_ARGV = re.compile(r"--(token|password|secret|key)\b|://[^/\s:@]+:[^/\s@]+@", re.I)


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_units_take_credentials_from_files_never_argv(unit: str) -> None:
    settings = unit_settings((UNITS / unit).read_text())
    execs = [v for k, v in settings if k.startswith("Exec")]
    assert execs, f"{unit} has no Exec*="
    for value in execs:
        assert not SECRET_ON_ARGV.search(value), f"{unit}: a secret on the command line: {value}"
        assert "$" not in value, f"{unit}: {value} expands a variable onto the command line"
    for key, value in settings:
        if key in ("Environment", "SetCredential", "PassEnvironment"):
            assert not SECRET_ON_ARGV.search(value), f"{unit}: {key}= holds a secret: {value}"
    loads = [v for k, v in settings if k == "LoadCredential"]
    names = {v.partition(":")[0] for v in loads}
    # every unit that talks to the broker can take its URL from a credential; the dispatcher also
    # the database's; the key stays with the units that seal or open secrets.
    assert "broker-url" in names, f"{unit}: no LoadCredential=broker-url"
    if unit == "solstice-dispatcher.service":
        assert "database-url" in names and "secrets-key" not in names
    else:
        assert "secrets-key" in names and "database-url" not in names
    for value in loads:
        ident, _, source = value.partition(":")
        # an absolute source is required to exist (root's file, 0600); the bare form is optional
        assert not source or source.startswith("/etc/solstice/"), f"{unit}: LoadCredential={value}"
        assert ident in {"secrets-key", *config.URL_CREDENTIALS.values()}


def test_a_job_unit_argv_holds_no_secret_whatever_the_configuration(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "s.toml",
        f'[broker]\nurl = "{BROKER}"\n[database]\nurl = "{DATABASE}"\n'
        f'[paths]\nruntime_dir = "{tmp_path}/run"\nstate_dir = "{tmp_path}/state"\n',
    )
    cfg = config.load(toml, environ={"SOLSTICE_CONFIG": str(toml)})
    environ = {"SOLSTICE_BROKER_URL": BROKER, "SOLSTICE_VM_ACCEL": "tcg"}
    spawner = SystemdSpawner(cfg, template=TEMPLATE, run=lambda *a, **k: None, environ=environ)
    job = JobSpec(key="j", name="j", runs_on=("debian-12",), steps=())
    request = JobRequest(job_id="0b7e5a8e-3c1f-4d6e-9a8b-7c6d5e4f3a2b", job=job, label="debian-12")
    argv = spawner.argv(request, Path("/run/solstice/requests/x.json"), {"RuntimeMaxSec": "60"})
    line = shlex.join(argv)
    assert PASSWORD not in line, line
    assert "--setenv=SOLSTICE_VM_ACCEL=tcg" in argv  # overrides without a password still go
    assert "LoadCredential=job-request:/run/solstice/requests/x.json" in line.replace("'", "")
