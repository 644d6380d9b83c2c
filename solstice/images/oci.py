"""``oci://registry/repository:tag`` (or ``@sha256:...``): a qcow2 (or raw, vmdk, compressed) pushed
as an OCI artifact, e.g. with ``oras push``. Resolved through the OCI distribution API: the manifest,
then its layer's blob, whose digest verifies the download. Anonymous bearer tokens (ghcr.io, Docker
Hub) are fetched when the registry asks for one. Loopback registries are spoken to over plain http,
as docker does, for local mirrors and tests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import requests

from solstice.errors import DownloadError
from solstice.images.checksum import Digest

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
TITLE = "org.opencontainers.image.title"
MAX_MANIFEST = 4 << 20
_DISK = re.compile(r"\.(qcow2|raw|img|vmdk)(\.(zst|zstd|xz|gz))?$")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str
    reference: str  # a tag, or a digest "sha256:..."

    @property
    def base(self) -> str:
        host = self.registry.rsplit(":", 1)[0] if not self.registry.startswith("[") else self.registry
        scheme = "http" if host in _LOOPBACK or host.startswith("127.") else "https"
        return f"{scheme}://{self.registry}/v2/{self.repository}"


@dataclass(frozen=True)
class Blob:
    url: str
    digest: Digest
    name: str  # the layer's title (its file name), for the compression and messages
    media_type: str
    headers: dict[str, str]


def parse(source: str) -> Reference:
    rest = source.removeprefix("oci://")
    registry, _, path = rest.partition("/")
    if "@" in path:
        repository, _, reference = path.partition("@")
    else:
        head, _, tail = path.rpartition("/")
        name, sep, tag = tail.partition(":")
        repository, reference = (f"{head}/{name}" if head else name), (tag if sep else "latest")
    if not registry or not repository or not reference:
        raise DownloadError(f"{source}: not an oci://registry/repository:tag reference")
    return Reference(registry, repository, reference)


def _token(session: requests.Session, challenge: str, timeout: float) -> str | None:
    """An anonymous token for a ``WWW-Authenticate: Bearer realm=...`` challenge."""
    if not challenge.lower().startswith("bearer "):
        return None
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", "")
    if not realm:
        return None
    reply = session.get(realm, params=params, timeout=timeout)
    if reply.status_code != 200:
        return None
    body = reply.json()
    token = body.get("token") or body.get("access_token")
    return token if isinstance(token, str) else None


def _get_manifest(
    session: requests.Session, ref: Reference, timeout: float
) -> tuple[dict[str, Any], dict[str, str]]:
    url = f"{ref.base}/manifests/{ref.reference}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES + INDEX_TYPES)}
    try:
        reply = session.get(url, headers=headers, timeout=timeout)
        if reply.status_code == 401:
            token = _token(session, reply.headers.get("WWW-Authenticate", ""), timeout)
            if token:
                headers["Authorization"] = f"Bearer {token}"
                reply = session.get(url, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise DownloadError(f"{url}: {exc}") from None
    if reply.status_code != 200:
        raise DownloadError(f"{url}: {reply.status_code} {reply.reason}")
    if len(reply.content) > MAX_MANIFEST:
        raise DownloadError(f"{url}: a manifest of {len(reply.content)} bytes is too big")
    try:
        manifest = json.loads(reply.content)
    except ValueError:
        raise DownloadError(f"{url}: the manifest is not JSON") from None
    if not isinstance(manifest, dict):
        raise DownloadError(f"{url}: the manifest is not a JSON object")
    auth = {"Authorization": headers["Authorization"]} if "Authorization" in headers else {}
    return manifest, auth


def resolve(session: requests.Session, source: str, timeout: float = 30.0) -> Blob:
    """The blob holding the disk image of ``source``: the manifest's one layer, or the one whose
    title is a disk image file name."""
    ref = parse(source)
    manifest, auth = _get_manifest(session, ref, timeout)
    media_type = str(manifest.get("mediaType", ""))
    if media_type in INDEX_TYPES or "manifests" in manifest:
        raise DownloadError(
            f"{source}: an image index, not an artifact manifest",
            hint="push the disk as a single-file artifact (e.g. `oras push REF disk.qcow2`)",
        )
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise DownloadError(f"{source}: the manifest has no layers")

    def title(layer: dict[str, Any]) -> str:
        annotations = layer.get("annotations") or {}
        return str(annotations.get(TITLE, "")) if isinstance(annotations, dict) else ""

    disks = [x for x in layers if isinstance(x, dict) and _DISK.search(title(x))]
    if len(layers) == 1 and isinstance(layers[0], dict):
        layer = layers[0]
    elif len(disks) == 1:
        layer = disks[0]
    else:
        raise DownloadError(
            f"{source}: {len(layers)} layers and {len(disks)} titled like a disk image; expected one"
        )
    digest = str(layer.get("digest", ""))
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm not in ("sha256", "sha512") or not re.fullmatch(r"[0-9a-f]+", hexdigest):
        raise DownloadError(f"{source}: layer digest {digest!r} is not sha256:<hex> or sha512:<hex>")
    return Blob(
        url=f"{ref.base}/blobs/{digest}",
        digest=Digest(algorithm, hexdigest),
        name=title(layer) or ref.repository.rsplit("/", 1)[-1],
        media_type=str(layer.get("mediaType", "")),
        headers=auth,
    )
