"""A secret is masked however the guest's output splits it: written in pieces with pauses between
(one line assembled from many chunks), and where an over-long line is cut (the cut never falls
inside a secret). Against the in-process guest (tests/fakes/localguest.py)."""

from __future__ import annotations

from pathlib import Path

from solstice.job.events import LineSplitter
from solstice.job.mask import Masker
from solstice.model import EventKind
from tests.unit.test_job_steps import run
from tests.unit.test_job_steps import runtime as runtime  # noqa: F401  (fixture)

SECRET = "split-Secret-7f3a9c2e"
LIMIT = 64 * 1024


def test_a_secret_split_across_chunks_or_a_line_cut_is_masked(runtime: Path) -> None:  # noqa: F811
    out = run(
        runtime,
        f"""
        - name: pieces
          env:
            S: ${{{{ secrets.S }}}}
          run: |
            printf 'pieces: %s' "${{S:0:6}}"; sleep 0.3; printf '%s' "${{S:6:6}}"; sleep 0.3
            printf '%s\\n' "${{S:12}}"
            for cut in 1 5 10 20; do
              head -c $(({LIMIT} - cut)) /dev/zero | tr '\\0' x; printf '%s' "$S"; echo " end $cut"
            done
        """,
        secrets={"S": SECRET},
    )
    _, logs = out.step("pieces")
    assert logs[0] == "pieces: ***", logs[0]
    texts = [e.text for e in out.events if e.kind is EventKind.LOG]
    blob = "\n".join(texts)
    for part in (SECRET, SECRET[:8], SECRET[-8:], SECRET[4:14]):
        assert part not in blob, part
    assert blob.count("***") == 5
    assert all(len(t.encode()) <= LIMIT + len(SECRET) for t in texts)  # still cut: bounded memory
    for cut in (1, 5, 10, 20):
        assert any(t.endswith(f"*** end {cut}") or t == f"*** end {cut}" for t in texts), cut


def test_the_splitter_cuts_before_a_secret_that_spans_the_limit() -> None:
    masker = Masker([SECRET])
    splitter = LineSplitter(limit=100, guard=masker)
    data = b"x" * 95 + SECRET.encode() + b"y" * 200
    pieces = []
    for i in range(0, len(data), 7):  # small chunks, as SSH delivers them
        pieces += splitter.feed(data[i : i + 7])
    pieces += splitter.flush()
    assert "".join(pieces) == data.decode()
    assert pieces[0] == "x" * 95  # cut before the secret, not through it
    assert [masker.apply(p) for p in pieces][1].startswith("***")
    assert all(len(p) <= 100 for p in pieces)
