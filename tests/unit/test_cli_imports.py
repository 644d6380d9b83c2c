"""The daemons load only what they use: building the parser imports just the chosen verb's module,
and the dispatcher and the forge runners never import the VM side (paramiko, qemu.qmp, pycdlib),
which is a third of an idle daemon's memory (docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from solstice.cli.main import VERBS, build_parser, chosen_verb

VM_SIDE = ("paramiko", "qemu", "pycdlib")


@pytest.mark.parametrize(
    ("argv", "verb"),
    [
        (["dispatcher", "--host", "a"], "dispatcher"),
        (["--config", "/etc/x.toml", "--debug", "forgejo-runner", "run"], "forgejo-runner"),
        (["--config", "job", "status"], "status"),  # the value of --config is not a verb
        (["--config=/x", "job", "run"], "job"),
        (["--help"], None),
        ([], None),
        (["no-such-verb", "run"], None),
    ],
)
def test_the_verb_is_found_after_the_global_options(argv: list[str], verb: str | None) -> None:
    assert chosen_verb(argv) == verb


def test_a_parser_for_one_verb_has_only_it_and_the_full_one_every_verb() -> None:
    _, handlers = build_parser("status")
    assert list(handlers) == ["status"]
    _, handlers = build_parser()
    assert list(handlers) == list(VERBS)


@pytest.mark.parametrize(
    ("verb", "modules"),
    [
        (
            "dispatcher",
            ["solstice.dispatch.dispatcher", "solstice.dispatch.systemd", "solstice.dispatch.process"],
        ),
        ("forgejo-runner", ["solstice.forges.forgejo.backend"]),
        ("github-runner", ["solstice.forges.github.backend"]),
    ],
)
def test_a_daemon_does_not_load_the_vm_side(verb: str, modules: list[str]) -> None:
    code = (
        "import sys\n"
        "from solstice.cli.main import build_parser\n"
        f"build_parser({verb!r})\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"print(sorted(m for m in {VM_SIDE!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
