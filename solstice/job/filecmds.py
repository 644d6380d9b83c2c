"""The runner files: ``$GITHUB_ENV``, ``$GITHUB_OUTPUT`` (``NAME=value`` or ``NAME<<DELIM`` blocks)
and ``$GITHUB_PATH`` (one directory a line)."""

from __future__ import annotations

from solstice.errors import SolsticeError


class FileCommandError(SolsticeError):
    pass


def parse_key_values(text: str, what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        heredoc = line.find("<<")
        equals = line.find("=")
        if heredoc > 0 and (equals < 0 or heredoc < equals):
            name, delim = line[:heredoc], line[heredoc + 2 :]
            if not name or not delim:
                raise FileCommandError(f"{what}: invalid line {line!r}")
            body: list[str] = []
            while True:
                if i >= len(lines):
                    raise FileCommandError(f"{what}: no closing delimiter {delim!r} for {name}")
                if lines[i] == delim:
                    i += 1
                    break
                body.append(lines[i])
                i += 1
            result[name] = "\n".join(body)
        elif equals > 0:
            result[line[:equals]] = line[equals + 1 :]
        else:
            raise FileCommandError(f"{what}: invalid line {line!r} (expected NAME=value or NAME<<DELIMITER)")
    return result


def parse_path(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]
