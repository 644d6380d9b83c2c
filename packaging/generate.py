#!/usr/bin/env python3
"""The man page and the bash completion of ``solstice``, generated from its argparse definitions
(solstice.cli.main.build_parser), so neither can drift from the program.

    packaging/generate.py man              > solstice.1
    packaging/generate.py bash-completion  > solstice   (/usr/share/bash-completion/completions/)

Run from the source tree (PYTHONPATH=. when Solstice is not installed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Iterator

from solstice import __version__
from solstice.cli.main import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser), depth first: (), ("db",), ("db", "migrate"), ..."""
    yield path, parser
    for name, sub in _subcommands(parser).items():
        yield from _walk(sub, (*path, name))


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings]


def _roff(text: str) -> str:
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        # A line starting with . or ' would be a roff request.
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def man(parser: argparse.ArgumentParser) -> str:
    # SOURCE_DATE_EPOCH: reproducible builds (dpkg-buildpackage and rpmbuild set it).
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    date = (
        datetime.datetime.fromtimestamp(epoch or 0, datetime.UTC)
        if epoch
        else datetime.datetime.now(datetime.UTC)
    )
    out = [
        f'.TH SOLSTICE 1 "{date:%Y-%m-%d}" "solstice {__version__}" "Solstice CI"',
        ".SH NAME",
        "solstice \\- " + _roff(parser.description or ""),
        ".SH SYNOPSIS",
        ".B solstice",
        "[\\fB\\-\\-config\\fR \\fIFILE\\fR] [\\fB\\-\\-debug\\fR] \\fICOMMAND\\fR ...",
        ".SH DESCRIPTION",
        "Each command below is shown with the output of its \\fB\\-\\-help\\fR.",
        "The configuration file is described in /usr/share/doc/solstice-ci/configuration.md,",
        "installation in /usr/share/doc/solstice-ci/install.md; start with \\fBsolstice doctor\\fR.",
        ".SH OPTIONS",
        ".nf",
        _roff(parser.format_help()),
        ".fi",
        ".SH COMMANDS",
    ]
    for path, sub in _walk(parser):
        if not path:
            continue
        out += [f".SS solstice {' '.join(path)}", ".nf", _roff(sub.format_help()), ".fi"]
    out += [
        ".SH FILES",
        ".TP",
        "/etc/solstice/solstice.toml",
        "the configuration (every key commented)",
        ".TP",
        "/etc/solstice/secrets.key",
        "the key that seals job secrets (\\fBsolstice secrets init\\fR)",
        ".TP",
        "/var/lib/solstice/images",
        "the guest images",
        ".SH SEE ALSO",
        "systemctl(1), journalctl(1), qemu-system-x86_64(1)",
    ]
    return "\n".join(out) + "\n"


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A completion function: the words after ``solstice`` select a parser; offer its subcommands
    and options (options that take a file complete file names)."""
    cases = []
    for path, sub in _walk(parser):
        words = sorted(_subcommands(sub)) + sorted(_options(sub))
        cases.append(f'        "{" ".join(path)}") words="{" ".join(words)}" ;;')
    return (
        "# bash completion for solstice, generated from its argparse definitions (packaging/generate.py)\n"
        "_solstice() {\n"
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} path="" words w i\n'
        "    case $prev in --config|--key-file|--token|--output)\n"
        '        COMPREPLY=($(compgen -f -- "$cur")); return ;;\n'
        "    esac\n"
        "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
        "        w=${COMP_WORDS[i]}\n"
        "        [[ $w == -* ]] && continue\n"
        '        case "${path:+$path }$w" in\n'
        + "\n".join(f'        "{" ".join(p)}") path="{" ".join(p)}" ;;' for p, _ in _walk(parser) if p)
        + "\n        esac\n"
        "    done\n"
        '    case "$path" in\n' + "\n".join(cases) + "\n    esac\n"
        '    COMPREPLY=($(compgen -W "$words" -- "$cur"))\n'
        '    [[ $cur == -* || ${#COMPREPLY[@]} -gt 0 ]] || COMPREPLY=($(compgen -f -- "$cur"))\n'
        "}\n"
        "complete -F _solstice solstice\n"
    )


def main(argv: list[str]) -> int:
    os.environ["COLUMNS"] = "80"  # --help text wrapped the same on every build
    what = argv[1:] or ["man"]
    parser, _ = build_parser()
    if what == ["man"]:
        sys.stdout.write(man(parser))
    elif what == ["bash-completion"]:
        sys.stdout.write(bash_completion(parser))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
