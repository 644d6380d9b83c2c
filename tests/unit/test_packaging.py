"""The packaging's static promises (the builds themselves: tests/systemd/test_install.py):

- every library Solstice imports is an ordinary dependency, so a plain ``pip install`` runs every
  command (no extra is needed), and the .deb and the RPM depend on the same set;
- one version (solstice/__init__.py), no deprecated ``license`` table;
- the packaged /etc/solstice/solstice.toml shows every key with a comment and loads as is;
- the man page and the bash completion, generated from argparse, cover every command;
- the README starts with exactly two commands that need no sudo as root.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from solstice import __version__, config
from solstice.cli.main import VERBS

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONFFILE = ROOT / "packaging" / "solstice.toml"

#: distribution -> (Debian package, RPM package); qemu.qmp is vendored by both packages.
SYSTEM_PACKAGES = {
    "pyyaml": ("python3-yaml", "python3-pyyaml"),
    "paramiko": ("python3-paramiko", "python3-paramiko"),
    "cryptography": ("python3-cryptography", "python3-cryptography"),
    "pycdlib": ("python3-pycdlib", "python3-pycdlib"),
    "sdnotify": ("python3-sdnotify", "python3-sdnotify"),
    "pika": ("python3-pika", "python3-pika"),
    "psycopg": ("python3-psycopg", "python3-psycopg3"),
    "requests": ("python3-requests", "python3-requests"),
    "pyjwt": ("python3-jwt", "python3-jwt"),
    "zstandard": ("python3-zstandard", "python3-zstandard"),
    "prometheus-client": ("python3-prometheus-client", "python3-prometheus_client"),
}
VENDORED = {"qemu-qmp"}  # normalized (dist_name)


def dist_name(requirement: str) -> str:
    """The normalized (PEP 503) distribution name of a requirement or a distribution."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0]).lower()


def imported_top_level_modules() -> set[str]:
    """Every module ``solstice`` imports, deferred imports inside functions included."""
    names: set[str] = set()
    for path in (ROOT / "solstice").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"solstice", "__future__"}


def test_every_imported_library_is_an_ordinary_dependency() -> None:
    dependencies = {dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    for module in sorted(imported_top_level_modules()):
        dists = {dist_name(d) for d in providers.get(module, [])}
        assert dists, f"{module}: imported by solstice but provided by no installed distribution"
        assert dists & dependencies, f"{module} ({dists}) is not in [project] dependencies"
    # The extras hold no runtime library: `pip install solstice-ci` is enough for every command.
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["service"] == [], extras["service"]
    assert dependencies == set(SYSTEM_PACKAGES) | VENDORED


def test_the_deb_and_the_rpm_depend_on_the_same_libraries() -> None:
    control = (ROOT / "packaging" / "debian" / "control").read_text()
    depends = control.split("Package: solstice-ci", 1)[1].split("Recommends:", 1)[0]
    spec = (ROOT / "packaging" / "rpm" / "solstice-ci.spec").read_text()
    requires = set(re.findall(r"^Requires:\s+(\S+)", spec, re.M))
    for dist, (deb, rpm) in SYSTEM_PACKAGES.items():
        assert re.search(rf"\b{re.escape(deb)}\b", depends), (dist, deb)
        assert rpm in requires, (dist, rpm)
    for system in (
        ("qemu-system-x86", "qemu-system-x86"),
        ("qemu-utils", "qemu-img"),
        ("ovmf", "edk2-ovmf"),
    ):
        assert system[0] in depends and system[1] in requires, system
    assert "git" in depends and "git" in requires
    assert "qmp" not in depends and not [r for r in requires if "qmp" in r]
    assert re.search(r"^Recommends: postgresql, rabbitmq-server$", control, re.M)


def test_one_version_and_no_deprecated_license_table() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "solstice.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert "license" not in project  # a table is deprecated; a string is refused by bookworm's setuptools
    assert (ROOT / "LICENSE").read_text().startswith("Mozilla Public License Version 2.0")
    # The packages take the version from there too, not from a copy.
    for path in ("scripts/build-packages", "packaging/rpm/solstice-ci.spec", "packaging/debian/rules"):
        assert __version__ not in (ROOT / path).read_text(), path


def test_the_conffile_shows_every_key_with_a_comment_and_loads() -> None:
    text = CONFFILE.read_text()
    lines = text.splitlines()
    shown: dict[str, set[str]] = {}
    table = ""
    for i, line in enumerate(lines):
        heading = re.match(r"^#?\[([a-z]+)", line)
        if heading:
            table = heading.group(1)
            shown.setdefault(table, set())
            continue
        key = re.match(r"^#([a-z_][a-z0-9_]*) = ", line)
        if key:
            shown[table].add(key.group(1))
            # Its comment: the line above, or (for a group of keys) the first line above that is one.
            above = next(x for x in reversed(lines[:i]) if not re.match(r"^#[a-z_][a-z0-9_]* = ", x))
            assert above.startswith("# "), f"no comment above {key.group(1)} in [{table}]"
    tables = {**config._SECTIONS, "images": config.ImageConfig}
    for name, cls in tables.items():
        keys = {f.name for f in dataclasses.fields(cls)} - {"label"}
        if cls is config.PoolConfig:  # its keys and its [pool.<label>] tables' keys
            keys = keys - {"labels"} | {f.name for f in dataclasses.fields(config.PoolLabel)} - {"label"}
        assert keys - shown.get(name, set()) == set(), f"[{name}] keys missing from the conffile"
        assert shown.get(name, set()) - keys == set(), f"[{name}] shows keys that do not exist"
    assert "labels" in shown
    # As shipped (everything commented) it is the defaults; uncommented, every value is valid.
    defaults = config.load(CONFFILE, environ={})
    assert defaults.vm == config.VMConfig() and defaults.broker == config.BrokerConfig()
    uncommented = re.sub(r"(?m)^#(?=[a-z_\[])", "", text)
    assert set(tomllib.loads(uncommented)) == set(tables) | {"labels"}


def generated(what: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "generate.py"), what],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_man_page_and_the_completion_cover_every_command() -> None:
    man = generated("man")
    assert man.startswith(".TH SOLSTICE 1 ")
    completion = generated("bash-completion")
    for verb in VERBS:
        assert f".SS solstice {verb}\n" in man, verb
        assert re.search(rf'^\s+"{re.escape(verb)}"\) path=', completion, re.M), verb
    assert ".SS solstice db migrate\n" in man and ".SS solstice forgejo-runner register\n" in man
    assert "--key-file" in completion and "complete -F _solstice solstice" in completion
    proc = subprocess.run(
        [
            "bash",
            "-c",
            completion + '\nCOMP_WORDS=(solstice db m); COMP_CWORD=2; _solstice; echo "${COMPREPLY[@]}"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.split() == ["migrate"], proc.stdout + proc.stderr


def test_the_readme_starts_with_two_commands_that_work_as_root_without_sudo() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["scripts/try", "scripts/test"], commands
    # Not root and no sudo on PATH: they say so at once instead of failing half-way (as root they
    # go ahead without sudo; CI runs scripts/test as root).
    nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    as_nobody = nobody if os.geteuid() == 0 else []
    for command in commands:
        proc = subprocess.run(
            [*as_nobody, str(ROOT / command)],
            capture_output=True,
            text=True,
            env={"PATH": "/nonexistent", "HOME": "/nonexistent"},
            timeout=30,
        )
        assert proc.returncode == 1 and "needs root, and sudo is not installed" in proc.stderr, proc
