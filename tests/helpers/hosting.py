"""A real HTTPS file server on 127.0.0.1 (random port, in a thread) for the hosted-checkpoint tests.

It serves byte strings at chosen paths, and can misbehave on purpose: ``mode="truncate"`` announces
the full Content-Length and closes the connection after half the bytes; ``mode="html"`` answers 200
with an HTML page (what Google Drive and login walls do). TLS uses a throw-away certificate
authority made by ``trustme``; ``REQUESTS_CA_BUNDLE`` points requests (and so pooch) at it, so the
harness's https-only rule is exercised as it is, with no test-only exception in the code.
``mode="redirect"`` answers 302 to the route's body (a URL); ``mode="unsized"`` sends the body with
no Content-Length and closes the connection. The harness connects only to public addresses unless
the runner allows an origin (``ROBUST_FRONTIER_FETCH_ALLOW_HOSTS``): the server allows its own
``127.0.0.1:<port>`` while it runs, as a maintainer would allow a local mirror.
It also answers like the Hugging Face Hub for ``/<org>/<repo>/resolve/<commit>/<file>`` (HEAD with
``X-Repo-Commit`` and ``ETag``), so ``hf://`` downloads run against it through ``HF_ENDPOINT``.
"""
from __future__ import annotations

import hashlib
import os
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ALLOW_HOSTS_ENV = "ROBUST_FRONTIER_FETCH_ALLOW_HOSTS"
HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
             b"<body>Google Drive can't scan this file for viruses. <a href='?confirm=t'>Download "
             b"anyway</a></body></html>")


@dataclass
class Route:
    body: bytes
    mode: str = "ok"  # ok | truncate | html | hf | redirect | unsized
    hits: int = 0


class _Handler(BaseHTTPRequestHandler):
    server_version = "test"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _route(self) -> Route | None:
        return self.server.routes.get(self.path.split("?", 1)[0])  # type: ignore[attr-defined]

    def _headers(self, route: Route, length: int, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        if route.mode == "hf":
            commit = self.path.split("/resolve/", 1)[1].split("/", 1)[0]
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", '"' + hashlib.sha256(route.body).hexdigest() + '"')
        self.end_headers()

    def do_HEAD(self):
        route = self._route()
        if route is None:
            self.send_error(404)
            return
        body = HTML_PAGE if route.mode == "html" else route.body
        self._headers(route, len(body), "text/html" if route.mode == "html" else "application/octet-stream")

    def do_GET(self):
        route = self._route()
        if route is None:
            self.send_error(404)
            return
        route.hits += 1
        if route.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", route.body.decode())
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if route.mode == "unsized":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for i in range(0, len(route.body), 1 << 16):
                    self.wfile.write(route.body[i:i + (1 << 16)])
            except OSError:  # the client stopped reading
                pass
            return
        if route.mode == "html":
            self._headers(route, len(HTML_PAGE), "text/html; charset=utf-8")
            self.wfile.write(HTML_PAGE)
            return
        self._headers(route, len(route.body), "application/octet-stream")
        if route.mode == "truncate":
            self.wfile.write(route.body[: len(route.body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(route.body)


class FileServer:
    """``with FileServer() as srv: url = srv.add('/m.safetensors', data)``; ``srv.ca_file`` is the CA."""

    def __init__(self, tmp_path):
        import trustme

        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = tmp_path / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}  # type: ignore[attr-defined]
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.base = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, body: bytes, mode: str = "ok") -> str:
        self.httpd.routes[path] = Route(body, mode)  # type: ignore[attr-defined]
        return self.base + path

    def add_hf(self, repo_id: str, commit: str, filename: str, body: bytes) -> str:
        self.add(f"/{repo_id}/resolve/{commit}/{filename}", body, mode="hf")
        return f"hf://{repo_id}/{filename}@{commit}"

    def hits(self, path: str) -> int:
        return self.httpd.routes[path].hits  # type: ignore[attr-defined]

    def __enter__(self) -> "FileServer":
        self._thread.start()
        self._allowed = os.environ.get(ALLOW_HOSTS_ENV)
        os.environ[ALLOW_HOSTS_ENV] = ",".join(filter(None, [self._allowed, f"127.0.0.1:{self.port}"]))
        return self

    def __exit__(self, *exc) -> None:
        if self._allowed is None:
            os.environ.pop(ALLOW_HOSTS_ENV, None)
        else:
            os.environ[ALLOW_HOSTS_ENV] = self._allowed
        self.httpd.shutdown()
        self.httpd.server_close()
