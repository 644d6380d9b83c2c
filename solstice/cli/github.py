"""Run GitHub Actions jobs: ``solstice github-runner register|unregister|run|show``.

``register --url https://github.com/OWNER[/REPO] --token TOKEN --name NAME --labels LABEL`` registers
this installation as a self-hosted runner with a registration token (the repository's or the
organisation's *Settings -> Actions -> Runners -> New self-hosted runner*), or ``--jitconfig``
takes a just-in-time configuration instead; the credentials and the private key are stored (mode
0600) under the state directory. ``run`` is the service (solstice-github-runner.service).
``unregister --token REMOVE_TOKEN`` removes the runner from GitHub and deletes the files. ``show``
prints the registration without secrets. See docs/github.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from solstice import config as configmod
from solstice.cli.forgejo import (
    EXIT_REGISTRATION_GONE,
    _hand_to_service_user,
    _read_token,
    parse_labels,
)
from solstice.cli.poller import print_tasks, start_hint
from solstice.errors import ConfigError, SolsticeError

log = logging.getLogger("solstice.github")

#: 78 (EX_CONFIG), as for Forgejo: the unit does not restart (RestartPreventExitStatus=), since
#: only registering again (runner removed) or a configuration change (runner_version) helps.
EXIT_CONFIG = EXIT_REGISTRATION_GONE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="github_verb", metavar="COMMAND", required=True)
    reg = sub.add_parser("register", help="register with GitHub", allow_abbrev=False)
    reg.add_argument(
        "--url", help="https://github.com/OWNER (organisation) or https://github.com/OWNER/REPO"
    )
    reg.add_argument(
        "--token",
        metavar="TOKEN",
        help="the registration token; '-' reads it from standard input, '@FILE' from a file "
        "(keeps it out of the process list)",
    )
    reg.add_argument(
        "--jitconfig",
        metavar="BASE64|@FILE",
        help="a just-in-time runner configuration (one job), instead of --url/--token/--name",
    )
    reg.add_argument("--name", help="the runner's name shown in GitHub")
    reg.add_argument("--labels", required=True, metavar="A,B", help="the image label (plus generic ones)")
    reg.add_argument("--ephemeral", action="store_true", help="take one job, then GitHub removes the runner")
    reg.add_argument("--force", action="store_true", help="replace an existing registration")
    unreg = sub.add_parser("unregister", help="remove the runner from GitHub and here", allow_abbrev=False)
    unreg.add_argument(
        "--token", metavar="TOKEN", help="a remove token ('-' stdin, '@FILE'); without it only the files go"
    )
    sub.add_parser("run", help="the service: take jobs, report them", allow_abbrev=False)
    sub.add_parser(
        "show", help="the registration (no secrets) and the jobs being reported", allow_abbrev=False
    )


def main(args: argparse.Namespace) -> int:
    cfg = configmod.load(Path(args.config) if args.config else None)
    verb = args.github_verb
    if verb == "register":
        return register(cfg, args)
    if verb == "unregister":
        return unregister(cfg, args)
    if verb == "run":
        return run(cfg, args)
    if verb == "show":
        return show(cfg)
    raise AssertionError(verb)


def _path(cfg: configmod.Config) -> Path:
    from solstice.forges.github.registration import default_path

    return default_path(cfg.paths.state_dir)


def _read_jitconfig(value: str) -> str:
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--jitconfig {value}: cannot read it: {exc.strerror}") from None
    if value == "-":
        return sys.stdin.readline().strip()
    return value.strip()


def register(cfg: configmod.Config, args: argparse.Namespace) -> int:
    from solstice.forges.github import auth
    from solstice.forges.github import messages as m
    from solstice.forges.github.backend import USER_AGENT, the_label
    from solstice.forges.github.client import DEFAULT_RUNNER_VERSION, RegistrationClient, RunnerScope
    from solstice.forges.github.registration import Registration, from_jit_config, load, save

    path = _path(cfg)
    labels = parse_labels(args.labels)
    the_label(labels)
    if path.exists() and not args.force:
        try:
            old = load(path)
            what = f"as {old.settings.agent_name!r} with {old.settings.github_url}"
        except SolsticeError:
            what = f"({path} exists)"
        raise ConfigError(
            f"this installation is registered already {what}",
            hint="--force replaces it; `solstice github-runner unregister` removes it from GitHub",
        )
    if args.jitconfig:
        try:
            reg = from_jit_config(_read_jitconfig(args.jitconfig), tuple(labels))
        except m.CodecError as exc:
            raise ConfigError(
                f"--jitconfig: {exc}", hint="pass the encoded_jit_config GitHub answered"
            ) from None
    else:
        if not (args.url and args.token and args.name):
            raise ConfigError("register needs --url, --token and --name (or --jitconfig)")
        url = args.url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--url {args.url!r}: must start with https://")
        token = _read_token(args.token)
        scope = RunnerScope.from_url(url)
        key = auth.new_private_key()
        client = RegistrationClient(scope, user_agent=USER_AGENT)
        try:
            enrolment = client.register(
                token,
                name=args.name,
                key=key,
                labels=labels,
                version=cfg.github.runner_version or DEFAULT_RUNNER_VERSION,
                ephemeral=args.ephemeral,
                replace=args.force,
            )
        finally:
            client.close()
        reg = Registration(
            enrolment.settings, enrolment.credentials, auth.private_key_pem(key), labels=tuple(labels)
        )
    save(path, reg)
    _hand_to_service_user(path)
    kind = "JIT (one job)" if reg.jit else "ephemeral (one job)" if reg.ephemeral else "long-lived"
    print(
        f"registered runner {reg.settings.agent_name!r} (id {reg.settings.agent_id}) "
        f"with {reg.settings.github_url}"
    )
    print(f"labels: {', '.join(labels)}; {kind}")
    print(f"credentials: {path} (mode 0600)")
    print(start_hint("github-runner", cfg.path))
    return 0


def unregister(cfg: configmod.Config, args: argparse.Namespace) -> int:
    from solstice.forges.github.backend import USER_AGENT
    from solstice.forges.github.client import RegistrationClient, RunnerScope
    from solstice.forges.github.registration import load

    path = _path(cfg)
    reg = load(path)
    if args.token:
        client = RegistrationClient(RunnerScope.from_url(reg.settings.github_url), user_agent=USER_AGENT)
        try:
            client.unregister(reg.settings, _read_token(args.token))
        finally:
            client.close()
        print(f"removed runner {reg.settings.agent_name!r} from {reg.settings.github_url}")
    else:
        print("no --token: the runner stays listed in GitHub (remove it there, or pass a remove token)")
    path.unlink()
    print(f"deleted {path}")
    return 0


def run(cfg: configmod.Config, args: argparse.Namespace) -> int:
    from solstice.cli.poller import serve

    # a fatal error stops at once (jobs keep running; a restart resumes them); the one job of an
    # ephemeral/JIT runner, once it is fully reported
    from solstice.forges.github.errors import VersionTooOld

    try:
        backend, gone = serve(
            cfg,
            args,
            "github",
            stop_when=lambda b, p: b.fatal is not None or (b.should_stop() and not p.tasks),
        )
    except VersionTooOld as exc:  # refused already when opening the session
        print(f"solstice: error: {exc}", file=sys.stderr)
        print(
            f"  ({exc.hint or 'set [github] runner_version to a current runner release'})", file=sys.stderr
        )
        return EXIT_CONFIG
    if gone is not None:
        print(f"solstice: error: GitHub no longer knows runner {backend.name!r}: {gone}", file=sys.stderr)
        print(
            "  (it was removed in GitHub's settings: register again with "
            "`solstice github-runner register --force ...`; its running jobs were cancelled)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if backend.fatal is not None:
        # e.g. RunnerVersionTooOld: a restart cannot help until the configuration changes
        print(f"solstice: error: {backend.fatal}", file=sys.stderr)
        if backend.fatal.hint:
            print(f"  ({backend.fatal.hint})", file=sys.stderr)
        return EXIT_CONFIG
    if backend.exhausted:
        log.info("runner %s took its one job: exiting", backend.name)
    return 0


def show(cfg: configmod.Config) -> int:
    from solstice.forges.github.registration import load

    path = _path(cfg)
    reg = load(path)
    view = reg.public_view()
    print(f"runner:  {view['name']} (id {view['agent_id']})")
    print(f"github:  {view['github_url']}")
    print(f"labels:  {', '.join(view['labels'])}")
    print(f"kind:    {'JIT' if view['jit'] else 'ephemeral' if view['ephemeral'] else 'long-lived'}")
    print(f"broker:  {view['broker']}")
    print(f"file:    {path}")

    def describe(data: dict[str, Any]) -> str:
        result = data.get("reporter", {}).get("result") or "running"
        return f"job {data.get('task_id')}: {data.get('job_id') or '(refused)'} {result}"

    print_tasks(path.parent / "tasks", "jobs", describe)
    return 0
