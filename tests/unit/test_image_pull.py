"""Image downloads against a real local HTTP server (tests/fakes/images.py): every compression,
resume after a dropped connection, checksum files, refusals (digest, format, 404), OCI artifacts.
After every failure no file with the image's name (or a state saying it is verified) is left."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from solstice.backoff import Backoff
from solstice.config import load
from solstice.errors import ChecksumMismatch, DownloadError
from solstice.images import Catalog, Image
from solstice.images.checksum import Digest, parse_checksums
from solstice.images.download import CHUNK, Downloader
from solstice.images.pull import Puller
from solstice.images.state import read_state, readiness
from tests.fakes.images import TOKEN, ImageServer

MIB = 1 << 20


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as s:
        yield s


@pytest.fixture(scope="module")
def raw_disk() -> bytes:
    return os.urandom(3 * MIB + 12345)


@pytest.fixture(scope="module")
def qcow2_disk(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("qcow2") / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path.read_bytes()


def host(tmp_path: Path, entries: str) -> Catalog:
    """A host whose images.d holds ``entries``; state under tmp_path/state."""
    images_d = tmp_path / "images.d"
    images_d.mkdir(exist_ok=True)
    (images_d / "test.toml").write_text(entries)
    cfg = tmp_path / "solstice.toml"
    cfg.write_text(f'[paths]\nstate_dir = "{tmp_path}/state"\nimages_d = "{images_d}"\n')
    return Catalog.from_config(load(cfg, environ={}))


def entry(label: str, source: str, data: bytes | None = None, **keys: str) -> str:
    lines = [f"[images.{label}]", f'source = "{source}"']
    if data is not None:
        lines.append(f'sha256 = "{hashlib.sha256(data).hexdigest()}"')
    lines += [f'{k} = "{v}"' for k, v in {"format": "raw", **keys}.items()]
    return "\n".join(lines) + "\n"


def puller(attempts: int = 4) -> Puller:
    fast = Backoff(initial=0.01, maximum=0.05, jitter=0.0)
    return Puller(Downloader(attempts=attempts, backoff=fast, timeout=10))


def leftovers(image: Image) -> list[str]:
    """Files next to the disk other than the disk and the pull lock."""
    d = image.base_image.parent
    return sorted(p.name for p in d.iterdir() if p.name != ".pull.lock") if d.exists() else []


def assert_nothing_usable(image: Image) -> None:
    assert not image.base_image.exists()
    assert image.state_dir is not None and read_state(image.state_dir) is None
    assert not readiness(image).ready


def compress(kind: str, data: bytes) -> bytes:
    if kind == "zst":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if kind == "xz":
        return lzma.compress(data, preset=0)
    if kind == "gz":
        return gzip.compress(data, compresslevel=1)
    return data


@pytest.mark.parametrize("kind", ["zst", "xz", "gz", "none"])
def test_pull_decompresses_verifies_and_installs_each_compression(
    tmp_path: Path, server: ImageServer, raw_disk: bytes, kind: str
) -> None:
    published = compress(kind, raw_disk)
    name = "disk.raw" + {"zst": ".zst", "xz": ".xz", "gz": ".gz", "none": ""}[kind]
    server.files[f"/{name}"] = published
    catalog = host(tmp_path, entry("img", server.url(name), published))
    image = catalog.get("img")
    seen: list[tuple[str, int, int | None]] = []
    state = puller().pull(image, lambda phase, done, total: seen.append((phase, done, total)))
    assert image.base_image.read_bytes() == raw_disk
    assert state.sha256 == hashlib.sha256(raw_disk).hexdigest() and state.ok
    assert state.download == f"sha256:{hashlib.sha256(published).hexdigest()}"
    assert leftovers(image) == ["disk.raw", "state.json"]
    assert readiness(image).ready and "sha256 verified" in readiness(image).reason
    downloads = [(d, t) for phase, d, t in seen if phase == "download"]
    assert downloads[-1] == (len(published), len(published)) and len(downloads) >= 1
    assert [d for d, _ in downloads] == sorted(d for d, _ in downloads)  # monotonic
    if kind != "none":
        assert any(phase == "decompress" for phase, _, _ in seen)


def test_a_dropped_connection_is_resumed_with_range(
    tmp_path: Path, server: ImageServer, raw_disk: bytes
) -> None:
    server.files["/disk.raw"] = raw_disk
    cut = MIB + MIB // 2
    server.drops["/disk.raw"] = [cut]
    image = host(tmp_path, entry("img", server.url("disk.raw"), raw_disk)).get("img")
    puller().pull(image)
    assert image.base_image.read_bytes() == raw_disk
    first, second = server.requests_for("/disk.raw")
    assert (first.range, first.body_bytes) == (None, cut)
    assert second.range is not None and second.status == 206
    start = int(second.range.removeprefix("bytes=").rstrip("-"))
    # resumed where the written part ends (at most the one chunk being read is fetched again)
    assert cut - CHUNK <= start <= cut and second.body_bytes == len(raw_disk) - start


def test_a_server_without_ranges_sends_it_all_again(
    tmp_path: Path, server: ImageServer, raw_disk: bytes
) -> None:
    server.ranges = False
    server.files["/disk.raw"] = raw_disk
    server.drops["/disk.raw"] = [MIB]
    image = host(tmp_path, entry("img", server.url("disk.raw"), raw_disk)).get("img")
    puller().pull(image)
    assert image.base_image.read_bytes() == raw_disk  # the 200 replaced the part, not appended
    assert [(s.status, s.body_bytes) for s in server.requests_for("/disk.raw")] == [
        (200, MIB),
        (200, len(raw_disk)),
    ]


def test_when_retries_run_out_the_part_is_kept_and_the_next_pull_resumes(
    tmp_path: Path, server: ImageServer, raw_disk: bytes
) -> None:
    server.files["/disk.raw"] = raw_disk
    server.drops["/disk.raw"] = [MIB, MIB]
    image = host(tmp_path, entry("img", server.url("disk.raw"), raw_disk)).get("img")
    with pytest.raises(DownloadError) as info:
        puller(attempts=2).pull(image)
    assert "gave up after 2 attempts" in str(info.value)
    assert info.value.hint is not None and "pull again to resume" in info.value.hint
    assert leftovers(image) == [".disk.raw.download.part"]
    assert (image.base_image.parent / ".disk.raw.download.part").stat().st_size == 2 * MIB
    assert_nothing_usable(image)
    puller().pull(image)
    assert image.base_image.read_bytes() == raw_disk
    assert server.requests_for("/disk.raw")[-1].range == f"bytes={2 * MIB}-"


def test_a_checksum_mismatch_is_refused_and_nothing_is_left(
    tmp_path: Path, server: ImageServer, raw_disk: bytes
) -> None:
    server.files["/disk.raw.zst"] = compress("zst", raw_disk)
    image = host(tmp_path, entry("img", server.url("disk.raw.zst"), b"another file")).get("img")
    with pytest.raises(ChecksumMismatch, match="the download was deleted"):
        puller().pull(image)
    assert leftovers(image) == []
    assert_nothing_usable(image)


def test_a_missing_file_is_reported_once_not_retried(tmp_path: Path, server: ImageServer) -> None:
    image = host(tmp_path, entry("img", server.url("gone.raw"), b"x")).get("img")
    with pytest.raises(DownloadError, match=r"gone.raw: 404 Not Found"):
        puller().pull(image)
    assert len(server.requests_for("/gone.raw")) == 1
    assert_nothing_usable(image)
    assert leftovers(image) == []


def test_the_format_is_checked_with_qemu_img(tmp_path: Path, server: ImageServer, raw_disk: bytes) -> None:
    server.files["/disk.qcow2"] = raw_disk  # raw bytes published as a qcow2
    image = host(tmp_path, entry("img", server.url("disk.qcow2"), raw_disk, format="qcow2")).get("img")
    with pytest.raises(DownloadError, match="qemu-img says this is a raw image, the entry says qcow2"):
        puller().pull(image)
    assert leftovers(image) == []
    assert_nothing_usable(image)


def test_a_real_qcow2_pulls_through_a_checksum_file(
    tmp_path: Path, server: ImageServer, qcow2_disk: bytes
) -> None:
    xz = compress("xz", qcow2_disk)
    other = hashlib.sha256(b"other").hexdigest()
    sums = f"{other}  other.qcow2.xz\n{hashlib.sha256(xz).hexdigest()} *disk.qcow2.xz\n"
    server.files["/rel/disk.qcow2.xz"] = xz
    server.files["/rel/SHA256SUMS"] = sums.encode()
    text = entry(
        "img", server.url("rel/disk.qcow2.xz"), format="qcow2", checksums=server.url("rel/SHA256SUMS")
    )
    image = host(tmp_path, text).get("img")
    state = puller().pull(image)
    assert state.format == "qcow2" and image.base_image.read_bytes() == qcow2_disk
    info = subprocess.run(["qemu-img", "info", str(image.base_image)], capture_output=True, text=True)
    assert "file format: qcow2" in info.stdout


def test_an_oci_artifact_is_pulled_through_the_distribution_api(
    tmp_path: Path, server: ImageServer, qcow2_disk: bytes
) -> None:
    zst = compress("zst", qcow2_disk)
    digest = server.push("solstice/omnios", "r151058", "omnios.cloud.qcow2.zst", zst)
    source = f"oci://{server.address}/solstice/omnios:r151058"
    image = host(tmp_path, f'[images.img]\nsource = "{source}"\nformat = "qcow2"\n').get("img")
    state = puller().pull(image)
    assert image.base_image.read_bytes() == qcow2_disk and state.download == digest
    paths = [(s.path, s.status) for s in server.log]
    # anonymous token dance, then the manifest, then the blob through the registry's redirect
    assert paths[:3] == [
        ("/v2/solstice/omnios/manifests/r151058", 401),
        ("/token?service=fake-registry&scope=repository%3Ax%3Apull", 200),
        ("/v2/solstice/omnios/manifests/r151058", 200),
    ]
    assert (f"/v2/solstice/omnios/blobs/{digest}", 307) in paths and (f"/storage/{digest}", 200) in paths
    assert TOKEN not in state.source

    # a tag that is not there; a digest reference; a blob whose bytes are not its digest
    missing = host(tmp_path, f'[images.img]\nsource = "oci://{server.address}/solstice/omnios:nope"\n').get(
        "img"
    )
    with pytest.raises(DownloadError, match="manifests/nope: 404"):
        puller().pull(missing)
    server.blobs[digest] = b"corrupted on the registry"
    again = host(tmp_path, f'[images.img]\nsource = "oci://{server.address}/solstice/omnios@{digest}"\n')
    server.manifests["solstice/omnios"][digest] = server.manifests["solstice/omnios"]["r151058"]
    with pytest.raises(ChecksumMismatch):
        puller().pull(again.get("img"))


@pytest.mark.parametrize(
    ("text", "digest"),
    [
        (f"{'a' * 64}  disk.qcow2\n{'b' * 64}  other\n", Digest("sha256", "a" * 64)),
        (f"{'c' * 64} *./dir/disk.qcow2\n", Digest("sha256", "c" * 64)),
        (f"SHA256 (other) = {'d' * 64}\nSHA256 (disk.qcow2) = {'E' * 64}\n", Digest("sha256", "e" * 64)),
        (f"SHA512 (disk.qcow2) = {'f' * 128}\n", Digest("sha512", "f" * 128)),
        (f"{'1' * 128}  disk.qcow2\n", Digest("sha512", "1" * 128)),
        (f"{'2' * 64}\n", Digest("sha256", "2" * 64)),  # a bare digest (OmniOS .sha256)
    ],
)
def test_checksum_file_formats(text: str, digest: Digest) -> None:
    assert parse_checksums(text, "disk.qcow2", "SUMS") == digest


def test_a_checksum_file_without_the_file_names_what_it_lists() -> None:
    with pytest.raises(
        DownloadError, match=r"https://x/SUMS: no sha256 or sha512 checksum for disk.qcow2 \(it lists a.img"
    ):
        parse_checksums(f"{'a' * 64}  a.img\n", "disk.qcow2", "https://x/SUMS")


def test_plain_http_needs_a_pinned_digest_or_a_loopback_host(tmp_path: Path) -> None:
    text = (
        '[images.img]\nsource = "http://mirror.example/disk.raw"\nchecksums = "http://mirror.example/SUMS"\n'
    )
    with pytest.raises(DownloadError, match="plain http without a pinned sha256"):
        puller().pull(host(tmp_path, text).get("img"))


@pytest.mark.parametrize("kind", ["zst", "xz", "gz"])
def test_data_that_does_not_decompress_is_refused(tmp_path: Path, server: ImageServer, kind: str) -> None:
    junk = os.urandom(100_000)  # the digest matches: the publisher's file is simply not what it says
    server.files[f"/disk.raw.{kind}"] = junk
    image = host(tmp_path, entry("img", server.url(f"disk.raw.{kind}"), junk)).get("img")
    with pytest.raises(DownloadError, match=f"not valid {kind} data"):
        puller().pull(image)
    assert leftovers(image) == []
    assert_nothing_usable(image)


def test_a_pattern_source_pulls_the_newest_match_of_the_directory_index(
    tmp_path: Path, server: ImageServer, raw_disk: bytes
) -> None:
    new = compress("zst", raw_disk)
    names = ["omnios-bloody-20261001.cloud.raw.zst", "omnios-bloody-20261120.cloud.raw.zst"]
    for name, data in zip(names, [b"old", new], strict=True):
        server.files[f"/bloody/{name}"] = data
        server.files[f"/bloody/{name}.sha256"] = hashlib.sha256(data).hexdigest().encode() + b"\n"
    links = [*names, f"{names[1]}.sha256", "omnios-bloody-20261120.usb-dd", "../", "/elsewhere/x.raw.zst"]
    server.files["/bloody/"] = "".join(f'<a href="{n}">{n}</a>\n' for n in links).encode()
    text = (
        f'[images.bloody]\nsource = "{server.url("bloody/omnios-bloody-*.cloud.raw.zst")}"\n'
        'checksums = "{source}.sha256"\nformat = "raw"\n'
    )
    image = host(tmp_path, text).get("bloody")
    state = puller().pull(image)
    assert state.source == server.url(f"bloody/{names[1]}")  # the file, not the pattern
    assert image.base_image.read_bytes() == raw_disk
    server.files["/bloody/"] = b'<a href="omnios-bloody-2026.usb-dd">x</a>'
    with pytest.raises(DownloadError, match=r"bloody/: no file matches omnios-bloody-\*.cloud.raw.zst"):
        puller().pull(image)
