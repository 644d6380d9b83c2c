"""A real HTTP server for image downloads (http.server in a thread): files with ``Range``
support, a mode that drops the connection mid-body, and the OCI distribution API's read side
(``/v2/<repo>/manifests/<ref>``, ``/v2/<repo>/blobs/<digest>`` answered with a redirect to the
storage, as registries do, and an anonymous bearer-token challenge, as ghcr.io does)."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "anonymous-pull-token"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Served:
    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int


@dataclass
class ImageServer:
    files: dict[str, bytes] = field(default_factory=dict)
    #: path -> body byte counts after which the next requests' connections are dropped (one each)
    drops: dict[str, list[int]] = field(default_factory=dict)
    #: repository -> tag -> manifest; digest -> blob
    manifests: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    log: list[Served] = field(default_factory=list)
    #: False: ignore Range headers (answer 200 with the whole file), as some mirrors do
    ranges: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"127.0.0.1:{port}"

    def url(self, path: str) -> str:
        return f"http://{self.address}/{path.lstrip('/')}"

    def push(self, repository: str, tag: str, name: str, data: bytes) -> str:
        """An OCI artifact of one file (what ``oras push REF name`` makes); returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        config = b"{}"
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        self.blobs[digest] = data
        self.blobs[config_digest] = config
        self.manifests.setdefault(repository, {})[tag] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.solstice.disk",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config_digest, "size": 2},
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest,
                    "size": len(data),
                    "annotations": {"org.opencontainers.image.title": name},
                }
            ],
        }
        return digest

    def requests_for(self, path: str) -> list[Served]:
        with self.lock:
            return [s for s in self.log if s.path == path]

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _record(self, status: int, body: int) -> None:
            with server.lock:
                server.log.append(Served(self.command, self.path, self.headers.get("Range"), status, body))

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self._record(status, len(body))  # before the client can see the answer
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/token"):
                return self._send(200, json.dumps({"token": TOKEN}).encode())
            if self.path.startswith("/v2/"):
                return self._registry()
            data = server.files.get(self.path)
            if data is None:
                return self._send(404, b"not found")
            self._file(data)

        def _file(self, data: bytes) -> None:
            start = 0
            wanted = self.headers.get("Range")
            m = re.fullmatch(r"bytes=(\d+)-", wanted or "") if server.ranges else None
            if m:
                start = int(m.group(1))
                if start >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            body = data[start:]
            status = 206 if m else 200
            with server.lock:
                drops = server.drops.get(self.path)
                cut = drops.pop(0) if drops else None
            dropped = cut is not None and cut < len(body)
            self._record(status, cut if dropped and cut is not None else len(body))  # before any answer
            self.send_response(status)
            if m:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if dropped and cut is not None:
                # The connection dies mid-body: part of it, then a reset.
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

        def _registry(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                realm = f"http://{server.address}/token"
                challenge = f'Bearer realm="{realm}",service="fake-registry",scope="repository:x:pull"'
                return self._send(401, b"{}", {"WWW-Authenticate": challenge})
            m = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", self.path)
            if not m:
                return self._send(404)
            repository, kind, ref = m.groups()
            if kind == "manifests":
                manifest = server.manifests.get(repository, {}).get(ref)
                if manifest is None:
                    return self._send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')
                return self._send(200, json.dumps(manifest).encode(), {"Content-Type": OCI_MANIFEST})
            if ref not in server.blobs:
                return self._send(404, b'{"errors": [{"code": "BLOB_UNKNOWN"}]}')
            # Registries redirect blob downloads to their storage.
            path = f"/storage/{ref}"
            server.files[path] = server.blobs[ref]
            return self._send(307, b"", {"Location": f"http://{server.address}{path}"})

    return Handler
