"""The HTTP surfaces: the metrics endpoint (bind address, bearer token, port in use)
and the webhook transport against hostile receivers (redirects, endless or slow
answers, TLS verification)."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from connectors.webhook import MAX_RESPONSE_BYTES, UrllibTransport
from monitor.alerting.formats import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    endpoints_from_config,
    hmac_signer,
)
from monitor.config.alerts import load_alerts_config
from monitor.config.schema import MetricsConfig
from monitor.errors import ConfigError
from monitor.metrics import Metrics, MetricsServer

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-9d8Qe-http"


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status), dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        e.close()
        return int(e.code), dict(e.headers), body


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    pages = {"/status.json": lambda: (b'{"events": 1}', "application/json")}
    s = MetricsServer(Metrics(), "127.0.0.1", 0, pages=pages, token=TOKEN).start()
    yield s
    s.stop()


def test_default_listen_is_loopback() -> None:
    assert MetricsConfig().host == "127.0.0.1"


def test_bearer_token_guards_everything_but_metrics_and_probes(server: MetricsServer) -> None:
    host, port = server.address
    assert host == "127.0.0.1"
    base = f"http://{host}:{port}"
    for path in ("/metrics", "/healthz", "/readyz"):
        assert _get(base + path)[0] == 200, path
    code, headers, _ = _get(base + "/status.json")
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert _get(base + "/status.json", "wrong")[0] == 401
    assert _get(base + "/nothing-here")[0] == 401  # unknown paths do not leak existence
    code, headers, body = _get(base + "/status.json", TOKEN)
    assert (code, body) == (200, b'{"events": 1}')
    assert headers["Content-Type"] == "application/json"


def test_without_a_token_status_is_open() -> None:
    pages = {"/status.json": lambda: (b"{}", "application/json")}
    s = MetricsServer(Metrics(), "127.0.0.1", 0, pages=pages).start()
    try:
        host, port = s.address
        assert _get(f"http://{host}:{port}/status.json")[0] == 200
    finally:
        s.stop()


def test_port_in_use_names_port_and_setting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            MetricsServer(Metrics(), "127.0.0.1", port, setting="metrics.listen")
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "metrics.listen" in message
    assert "\n" not in message


# -- hostile webhook receivers ----------------------------------------------------


class _Server:
    """A local HTTP(S) server whose POST handler is ``respond(handler)``."""

    def __init__(
        self, respond: Callable[[BaseHTTPRequestHandler], None], tls: ssl.SSLContext | None = None
    ) -> None:
        self.posts: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.posts.append(self.path)
                with contextlib.suppress(OSError):  # the client hung up, as it should
                    respond(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.scheme = "https" if tls else "http"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _ok(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "2")
    h.end_headers()
    h.wfile.write(b"ok")


def test_redirects_are_never_followed() -> None:
    other = _Server(_ok)

    def redirect(h: BaseHTTPRequestHandler) -> None:
        h.send_response(307)  # 307 keeps the method and body
        h.send_header("Location", f"{other.url}/steal")
        h.send_header("Content-Length", "0")
        h.end_headers()

    first = _Server(redirect)
    try:
        assert UrllibTransport().post(first.url + "/hook", b"{}", {}, 2.0) == 307
        assert other.posts == []  # the alert went nowhere else
    finally:
        first.close()
        other.close()


def test_endless_answer_is_cut_at_the_size_limit() -> None:
    def endless(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 40))
        h.end_headers()
        chunk = b"x" * 65536
        for _ in range(10_000):  # bounded: 640 MB at most, far beyond the limit
            h.wfile.write(chunk)

    s = _Server(endless)
    try:
        started = time.monotonic()
        assert UrllibTransport().post(s.url, b"{}", {}, 2.0) == 200
        assert time.monotonic() - started < 2.0
        assert MAX_RESPONSE_BYTES == 65_536
    finally:
        s.close()


def test_dripping_answer_is_cut_at_twice_the_timeout() -> None:
    def drip(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(100):  # one byte every 0.1 s: each read is quick, the whole is not
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.1)

    s = _Server(drip)
    try:
        started = time.monotonic()
        assert UrllibTransport().post(s.url, b"{}", {}, 0.5) == 200
        assert time.monotonic() - started < 2.0
    finally:
        s.close()


def test_silent_receiver_times_out() -> None:
    def silent(h: BaseHTTPRequestHandler) -> None:
        time.sleep(3)

    s = _Server(silent)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            UrllibTransport().post(s.url, b"{}", {}, 0.5)
        assert time.monotonic() - started < 2.0
    finally:
        s.close()


def test_only_http_urls() -> None:
    with pytest.raises(OSError, match="http"):
        UrllibTransport().post("file:///etc/passwd", b"{}", {}, 1.0)


def _certificate(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed")
    cert, key = directory / "hook.pem", directory / "hook-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip
    return cert, key


def test_tls_is_verified_and_the_ca_bundle_is_configurable(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    s = _Server(_ok, tls=context)
    try:
        with pytest.raises(OSError, match="SSLCertVerificationError"):  # self-signed
            UrllibTransport().post(s.url + "/hook", b"{}", {}, 2.0)
        assert s.posts == []
        config = load_alerts_config(
            {
                "sinks": [
                    {
                        "type": "webhook",
                        "url": s.url + "/hook",
                        "secret": "k" * 24,
                        "tls_ca_file": str(cert),
                    }
                ]
            }
        )
        (endpoint,) = endpoints_from_config(config)
        assert endpoint.transport is not None
        assert endpoint.transport.post(endpoint.url, b"{}", {}, 2.0) == 200
        assert s.posts == ["/hook"]
    finally:
        s.close()


# -- the documented verification snippet --------------------------------------------


def _snippet(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    m = re.search(r"<!-- signature-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert m is not None, f"{path.name} has no signature snippet"
    return m.group(1)


def test_documented_verification_snippet_accepts_ours_and_rejects_forgeries() -> None:
    readme, security = _snippet(ROOT / "README.md"), _snippet(ROOT / "SECURITY.md")
    assert readme == security
    namespace: dict[str, Any] = {}
    exec(compile(security, "SECURITY.md", "exec"), namespace)  # our own docs
    verify = namespace["verify"]
    secret, body = b"whsec-doc-test", b'{"id":"a1","status":"firing"}'
    now = time.time()
    _, headers = hmac_signer(secret)(body, {}, now)
    headers = dict(headers)
    assert verify(secret, body, headers)
    assert not verify(b"other-secret", body, headers)
    assert not verify(secret, body + b" ", headers)
    stale = dict(hmac_signer(secret)(body, {}, now - 600)[1])  # a replay, 10 min late
    assert not verify(secret, body, stale)
    moved = {**headers, TIMESTAMP_HEADER: str(int(now) + 1)}  # timestamp is signed
    assert not verify(secret, body, moved)
    assert not verify(secret, body, {SIGNATURE_HEADER: headers[SIGNATURE_HEADER]})
