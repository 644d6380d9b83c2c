"""What of a step's output may reach a terminal or the journal: text, tabs and SGR colours only.

A step's output is untrusted. Written raw to an operator's terminal, ``ESC ]0;title BEL`` retitles
it, ``ESC [2J`` clears it, OSC 52 writes the clipboard, and a bare ``CR`` or cursor move hides
the line before it. So every control character other than tab is shown as a visible escape
(``\\x1b``, ``\\r``, ``\\x9b``), except the SGR colour sequences ``ESC [ <digits ; :> m``, which
only colour text and pass unchanged. The one rule for the terminal renderer (solstice.cli.render)
and the job's journal lines (solstice.job.sink). Forge logs are not filtered here: the forges'
web log viewers render SGR as colours and show the rest as text, they drive no terminal.
"""

from __future__ import annotations

import re

#: An SGR sequence (colours, bold ...): the only control sequence let through. The parameter
#: length is bounded so a sequence cannot hide a line's worth of text.
_SGR = r"\x1b\[[0-9;:]{0,64}m"
#: C0 controls but tab and newline, DEL, and C1 controls (U+009B is an 8-bit CSI on some terminals).
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]"
_PATTERN = re.compile(f"({_SGR})|{_CONTROL}")
_NAMED = {"\r": "\\r", "\n": "\\n"}


def _visible(match: re.Match[str]) -> str:
    if match.group(1) is not None:
        return match.group(1)
    ch = match.group(0)
    return _NAMED.get(ch) or f"\\x{ord(ch):02x}"


def safe_text(text: str) -> str:
    """``text`` with every control character but tab, newline and SGR sequences made visible."""
    if text.isprintable():  # the common case, and fast: no control character at all
        return text
    return _PATTERN.sub(_visible, text)


def safe_line(text: str) -> str:
    """As ``safe_text``, for one line: a newline in it is made visible too."""
    return safe_text(text).replace("\n", "\\n")
