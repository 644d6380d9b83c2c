"""The public SSH keys of the user who triggered a job, for opt-in debug SSH (docs/debug-ssh.md).

Both forges publish every user's public keys without authentication, as a JSON list of objects
with a ``key`` field: Forgejo/Gitea ``GET <api_url>/users/{user}/keys`` (api_url is
``<root>/api/v1``), GitHub ``GET <api_url>/users/{user}/keys`` (``https://api.github.com``). The
job's github context names the API (``api_url``) and the user (``triggering_actor``, who started
this attempt, else ``actor``). Only jobs that ask for debug SSH (``SOLSTICE_DEBUG_SSH``) cost a
request. Public keys are not secret; they travel in the JobRequest (``debug_access``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from urllib.parse import quote

import requests

from solstice.errors import SolsticeError
from solstice.model import DebugAccess, JobRequest
from solstice.model import debugssh as policy

log = logging.getLogger("solstice.forges")

#: The most of a keys response that is read (a user with many keys has a few KiB).
MAX_BODY = 256 * 1024
MAX_KEYS = 50
_KEY = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( .*)?$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class KeysUnavailable(SolsticeError):
    """The forge did not give the user's keys; the message says why (it goes in the job's log)."""


def triggering_user(request: JobRequest) -> str:
    github = request.contexts.get("github") or {}
    return str(github.get("triggering_actor") or github.get("actor") or "")


def parse_keys(body: object) -> tuple[str, ...]:
    """The valid OpenSSH public key lines of a keys response (a JSON list of {"key": ...})."""
    if not isinstance(body, list):
        raise KeysUnavailable("the forge's answer is not a list of keys")
    keys: list[str] = []
    for item in body:
        key = str(item.get("key", "") if isinstance(item, dict) else "").strip()
        if key and "\n" not in key and _KEY.match(key) and key not in keys:
            keys.append(key)
    return tuple(keys[:MAX_KEYS])


def fetch_keys(api_url: str, user: str, *, timeout: float, user_agent: str) -> tuple[str, ...]:
    """``user``'s public keys from the forge's REST API; KeysUnavailable when it cannot say."""
    if not _USER.match(user):
        raise KeysUnavailable(f"{user!r} is not a user name the forge's keys API knows")
    url = f"{api_url.rstrip('/')}/users/{quote(user)}/keys"
    try:
        with requests.get(
            url,
            timeout=timeout,
            stream=True,
            headers={"Accept": "application/json", "User-Agent": user_agent},
        ) as resp:
            if resp.status_code == 404:
                raise KeysUnavailable(f"the forge has no user {user}")
            if resp.status_code != 200:
                raise KeysUnavailable(f"the forge answered HTTP {resp.status_code} for {user}'s keys")
            data = b""
            for chunk in resp.iter_content(16 * 1024):
                data += chunk
                if len(data) > MAX_BODY:
                    raise KeysUnavailable(f"the forge's list of {user}'s keys is over {MAX_BODY} bytes")
        try:
            body = json.loads(data)
        except ValueError:
            raise KeysUnavailable(f"the forge's list of {user}'s keys is not JSON") from None
    except requests.RequestException as exc:
        raise KeysUnavailable(
            f"the forge could not be asked for {user}'s keys ({type(exc).__name__})"
        ) from None
    return parse_keys(body)


def with_debug_access(
    request: JobRequest, default_api_url: str, *, timeout: float, user_agent: str
) -> JobRequest:
    """``request`` with the triggering user's keys when its job asks for debug SSH, else as it is.

    A failed fetch does not stop the job: the access carries the reason, which the job's log
    shows if the job fails (and then its VM is not kept)."""
    if not policy.requested(request.job):
        return request
    user = triggering_user(request)
    if not user:
        return dataclasses.replace(
            request, debug_access=DebugAccess(user="", problem="the forge named no user")
        )
    github = request.contexts.get("github") or {}
    api_url = str(github.get("api_url") or default_api_url)
    try:
        keys = fetch_keys(api_url, user, timeout=timeout, user_agent=user_agent)
        problem = "" if keys else f"the forge publishes no public SSH keys for {user}"
    except KeysUnavailable as exc:
        log.warning("job %s: debug SSH: %s", request.job_id, exc)
        keys, problem = (), str(exc)
    return dataclasses.replace(
        request, debug_access=DebugAccess(user=user, public_keys=keys, problem=problem)
    )
