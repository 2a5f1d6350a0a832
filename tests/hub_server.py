"""A Hugging Face Hub on 127.0.0.1, for the download test: the two requests `hf_hub_download` makes, answered
the way the hub answers them for a weight file stored with LFS.

`HEAD <endpoint>/<repo>/resolve/<revision>/<file>` gets a 302 whose headers carry the file's metadata
(X-Repo-Commit: the commit the revision points at; X-Linked-Etag: the file's sha256; X-Linked-Size) and a
Location on another origin, the CDN; huggingface_hub stops at a redirect that leaves the hub and takes the
metadata from it. `GET` of that Location returns the bytes with their Content-Length and, as the hub's CDN
does, a Content-Disposition naming the file (the name the progress bar shows). A file the repo lacks
is a 404 with X-Error-Code EntryNotFound, which huggingface_hub turns into EntryNotFoundError. Every
request is recorded, so a test can assert that a cached file costs none.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """Files by (repo id, file name); the requests seen, as (method, path)."""

    files: dict[tuple[str, str], bytes]
    requests: list[tuple[str, str]] = field(default_factory=list)
    endpoint: str = ""
    cdn: str = ""

    def blob(self, digest: str) -> tuple[str, bytes] | None:
        """(file name, bytes) of the file with this sha256, or None."""
        found = (
            (filename, data)
            for (_, filename), data in self.files.items()
            if hashlib.sha256(data).hexdigest() == digest
        )
        return next(found, None)


def _handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            hub.requests.append((self.command, f"{role}:{self.path}"))
            if role == "cdn":
                blob = hub.blob(self.path.strip("/"))
                if blob is None:
                    return self._reply(404, {})
                filename, data = blob
                headers = {
                    "Content-Length": str(len(data)),
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "Content-Disposition": f"inline; filename*=UTF-8''{filename}; filename=\"{filename}\";",
                }
                return self._reply(200, headers, data if body else b"")
            parts = self.path.lstrip("/").split("/")
            # <owner>/<name>/resolve/<revision>/<file>
            if len(parts) != 5 or parts[2] != "resolve":
                return self._reply(404, {"X-Error-Code": "RepoNotFound"})
            repo, filename = "/".join(parts[:2]), parts[4]
            data = hub.files.get((repo, filename))
            if data is None:
                return self._reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
            digest = hashlib.sha256(data).hexdigest()
            self._reply(
                302,
                {
                    "Location": f"{hub.cdn}/{digest}",
                    "X-Repo-Commit": COMMIT,
                    "X-Linked-Etag": f'"{digest}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": '"a-git-blob-id"',
                    "Content-Length": "0",
                },
            )

        def _reply(self, status: int, headers: dict[str, str], data: bytes = b"") -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
            pass

    return Handler


@contextmanager
def serve(files: dict[tuple[str, str], bytes]) -> Iterator[FakeHub]:
    """The hub and its CDN, each on a free port of 127.0.0.1, for the duration of the block."""
    hub = FakeHub(files)
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub, role)) for role in ("hub", "cdn")]
    hub.endpoint, hub.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield hub
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
