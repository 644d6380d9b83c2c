"""Run Forgejo (or Gitea) Actions jobs: ``solstice forgejo-runner register|run|show``.

``register --url URL --token TOKEN --name NAME --labels a,b`` registers this installation as a
runner with the registration token from the forge's *Settings -> Actions -> Runners* and stores
the runner's credentials (mode 0600) under the state directory; labels are names (no
``:docker://`` schemes), at least one of them not generic. A job goes to the queue of its label,
served by the dispatchers that have the label's image (docs/queue.md): no image is needed here.
``run`` is the service
(solstice-forgejo-runner.service): it takes tasks into the pipeline and reports them back.
``show`` prints the registration (without its token) and the tasks being reported.
See docs/forgejo.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import sys
from pathlib import Path
from typing import Any

from solstice import config as configmod
from solstice.cli.poller import print_tasks, start_hint
from solstice.errors import ConfigError, SolsticeError

log = logging.getLogger("solstice.forgejo")

#: Exit status of `run` when the forge no longer knows the runner: the unit does not restart
#: (RestartPreventExitStatus=), since only registering again helps. 78 is EX_CONFIG.
EXIT_REGISTRATION_GONE = 78
#: The user the packaged units run as; a registration written by root is handed to it.
SERVICE_USER = "solstice"
PING_ATTEMPTS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="forgejo_verb", metavar="COMMAND", required=True)
    reg = sub.add_parser("register", help="register with a Forgejo/Gitea instance", allow_abbrev=False)
    reg.add_argument("--url", required=True, help="the instance's URL, e.g. https://forge.example")
    reg.add_argument(
        "--token",
        required=True,
        metavar="TOKEN",
        help="the registration token (Settings -> Actions -> Runners); '-' reads it from standard "
        "input, '@FILE' from a file (keeps it out of the process list)",
    )
    reg.add_argument("--name", required=True, help="the runner's name shown in the forge")
    reg.add_argument(
        "--labels", required=True, metavar="A,B", help="runs-on labels this runner serves (image labels)"
    )
    reg.add_argument("--force", action="store_true", help="replace an existing registration")
    sub.add_parser("run", help="the service: take tasks, report their jobs", allow_abbrev=False)
    sub.add_parser("show", help="the registration and the tasks being reported", allow_abbrev=False)


def main(args: argparse.Namespace) -> int:
    cfg = configmod.load(Path(args.config) if args.config else None)
    if args.forgejo_verb == "register":
        return register(cfg, args)
    if args.forgejo_verb == "run":
        return run(cfg, args)
    if args.forgejo_verb == "show":
        return show(cfg)
    raise AssertionError(args.forgejo_verb)


def _registration_path(cfg: configmod.Config) -> Path:
    from solstice.forges.forgejo.registration import default_path

    return default_path(cfg.paths.state_dir, cfg.forgejo.registration_file)


def _read_token(value: str) -> str:
    if value == "-":
        token = sys.stdin.readline()
    elif value.startswith("@"):
        try:
            token = Path(value[1:]).read_text()
        except OSError as exc:
            raise ConfigError(f"--token {value}: cannot read it: {exc.strerror}") from None
    else:
        token = value
    token = token.strip()
    if not token:
        raise ConfigError("the registration token is empty")
    return token


def parse_labels(text: str) -> list[str]:
    """The label names, checked for their syntax (the images are the dispatchers' business)."""
    from solstice.model.labels import is_generic

    labels = [x.strip() for x in text.split(",") if x.strip()]
    if not labels:
        raise ConfigError("--labels: give at least one label")
    for label in labels:
        if ":" in label:
            raise ConfigError(
                f"label {label!r}: Solstice labels are names only (no ':docker://...' or ':host' schema)",
                hint=f"use {label.split(':', 1)[0]!r}; every job runs in a VM of that label's image",
            )
    if all(is_generic(x) for x in labels):
        raise ConfigError(
            "give at least one image label: generic labels alone (" + ", ".join(labels) + ") pick no image"
        )
    return labels


def register(cfg: configmod.Config, args: argparse.Namespace) -> int:
    from solstice.forges.core import ForgeUnavailable
    from solstice.forges.forgejo.backend import VERSION
    from solstice.forges.forgejo.client import Client, retry
    from solstice.forges.forgejo.registration import Registration, load, save

    path = _registration_path(cfg)
    labels = parse_labels(args.labels)
    url = args.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url {args.url!r}: must start with https:// (or http://)")
    if path.exists() and not args.force:
        try:
            old = load(path)
            what = f"as {old.name!r} with {old.address}"
        except SolsticeError:
            what = f"({path} exists)"
        raise ConfigError(
            f"this installation is registered already {what}",
            hint="--force replaces it; delete the old runner in the forge's runner list too",
        )
    token = _read_token(args.token)
    client = Client(url, user_agent=VERSION.replace(" ", "/"))
    try:
        try:
            retry(lambda: client.ping(args.name), attempts=PING_ATTEMPTS)
        except ForgeUnavailable as exc:
            raise ConfigError(
                f"cannot reach {url}: {exc}", hint="check the URL and that Actions is enabled there"
            ) from None
        runner = client.register(name=args.name, token=token, version=VERSION, labels=labels)
    finally:
        client.close()
    reg = Registration(
        id=runner.id,
        uuid=runner.uuid,
        name=runner.name or args.name,
        token=runner.token,
        address=url,
        labels=tuple(labels),
    )
    save(path, reg)
    _hand_to_service_user(path)
    print(f"registered runner {reg.name!r} (id {reg.id}) with {url}")
    print(f"labels: {', '.join(labels)}")
    print(f"credentials: {path} (mode 0600)")
    print(start_hint("forgejo-runner", cfg.path))
    return 0


def _hand_to_service_user(path: Path) -> None:
    """Registered as root for the packaged service: the file must be the service user's."""
    if os.geteuid() != 0:
        return
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return
    for p in (path.parent, path):
        os.chown(p, pw.pw_uid, pw.pw_gid)


def run(cfg: configmod.Config, args: argparse.Namespace) -> int:
    from solstice.cli.poller import serve

    backend, gone = serve(cfg, args, "forgejo")
    if gone is not None:
        print(
            f"solstice: error: the forge at {backend.url} no longer knows runner {backend.name!r}: {gone}",
            file=sys.stderr,
        )
        print(
            "  (it was deleted in the forge, or its token is wrong: register again with "
            "`solstice forgejo-runner register --force ...`; its running jobs were cancelled)",
            file=sys.stderr,
        )
        return EXIT_REGISTRATION_GONE
    return 0


def show(cfg: configmod.Config) -> int:
    from solstice.forges.forgejo.registration import load

    path = _registration_path(cfg)
    reg = load(path)
    print(f"runner:  {reg.name} (id {reg.id}, uuid {reg.uuid})")
    print(f"forge:   {reg.address}")
    print(f"labels:  {', '.join(reg.labels)}")
    print(f"file:    {path}")

    def describe(data: dict[str, Any]) -> str:
        state = data.get("reporter", {}).get("state", {})
        return (
            f"task {data.get('task_id')}: job {data.get('job_id') or '(rejected)'} "
            f"[{data.get('label') or '-'}] {state.get('result') or 'running'}"
        )

    print_tasks(path.parent / "tasks", "tasks", describe)
    return 0
