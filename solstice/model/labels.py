"""``runs-on`` labels -> the one label whose job queue a job goes to (docs/queue.md, "Routing").

Forge-neutral and catalog-free: a poller knows the labels its runner was registered with, not the
images behind them. The dispatchers that have a label's image (aliases included) consume its queue,
and the job host resolves the label to the image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from solstice.errors import SolsticeError

#: Labels that say nothing about the image (GitHub's defaults); ignored when choosing one.
GENERIC_LABELS = frozenset(
    {"self-hosted", "solstice", "x64", "amd64", "x86_64", "linux", "illumos", "freebsd"}
)


class RoutingError(SolsticeError):
    """A job's ``runs-on`` does not name exactly one of the runner's labels."""


def is_generic(label: str) -> bool:
    return label.lower() in GENERIC_LABELS


def queue_labels(labels: Iterable[str]) -> list[str]:
    """The labels (as written) that have a job queue: all but the generic ones, sorted."""
    return sorted({x for x in labels if not is_generic(x)})


def match(runs_on: Iterable[str], canonical: Callable[[str], str | None]) -> tuple[list[str], list[str]]:
    """The rule shared by the pollers (route) and the image catalog (Catalog.resolve): each label of
    ``runs-on`` is known (``canonical`` names what it stands for), generic, or unknown. Returns the
    known ones' canonical names, once each in order, and the unknown ones."""
    chosen: list[str] = []
    unknown: list[str] = []
    for label in runs_on:
        canon = canonical(label)
        if canon is not None:
            if canon not in chosen:
                chosen.append(canon)
        elif not is_generic(label):
            unknown.append(label)
    return chosen, unknown


def route(runs_on: Sequence[str], served: Iterable[str]) -> str:
    """The queue label of a job: its ``runs-on`` minus generic labels must name exactly one of the
    ``served`` labels (the runner's own)."""
    known = queue_labels(served)
    chosen, unknown = match(runs_on, lambda label: label if label in known else None)
    served_text = ", ".join(known) or "none"
    if unknown:
        raise RoutingError(
            f"runs-on: unknown label {', '.join(repr(u) for u in unknown)}; "
            f"this runner serves: {served_text}",
            hint="register the runner with that label, or use one of those labels",
        )
    if not chosen:
        raise RoutingError(
            f"runs-on {list(runs_on)!r} names no image label; this runner serves: {served_text}"
        )
    if len(chosen) > 1:
        raise RoutingError(f"runs-on {list(runs_on)!r} names several labels ({', '.join(chosen)}); name one")
    return chosen[0]
