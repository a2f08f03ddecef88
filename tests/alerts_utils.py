"""Helpers for end-to-end alert tests: an HTTP receiver, Prometheus + Alertmanager, metrics.

Everything listens on 127.0.0.1 only. The receiver can be taken down (its socket is
closed, so connections are refused) and brought back on the same port.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy/prometheus/rules/driftwarden.rules.yml"
SCHEMAS = ROOT / "deploy/schemas"


@dataclass(frozen=True)
class Request:
    """One POST the receiver answered with 2xx."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on 127.0.0.1 recording every POST (path, headers, body).

    ``status`` is the answer (non-2xx answers are counted in ``refused``, not recorded);
    ``down()`` closes the listening socket, ``up()`` listens again on the same port.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.refused = 0
        self.status = 200
        self._cond = threading.Condition(threading.RLock())
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._cond:
                    code = receiver.status
                    if 200 <= code < 300:
                        receiver.requests.append(
                            Request(self.path, dict(self.headers.items()), body, time.time())
                        )
                    else:
                        receiver.refused += 1
                    receiver._cond.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def up(self, attempts: int = 50) -> None:
        """Listen (again, on the same port once one was chosen)."""
        assert self._server is None, "already up"
        for i in range(attempts):  # the old socket may linger for a moment
            try:
                server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
                break
            except OSError:
                if i == attempts - 1:
                    raise
                time.sleep(0.1)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="receiver"
        )
        self._thread.start()

    def down(self) -> None:
        """Stop listening: connections are refused until ``up()``."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        thread.join(5)

    close = down

    def at(self, path: str) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.path == path]

    def bodies(self, path: str) -> list[Any]:
        return [r.json() for r in self.at(path)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)


@contextmanager
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metric_by_label(registry: CollectorRegistry, sample: str, label: str) -> dict[str, float]:
    """Sum ``sample`` (e.g. ``driftwarden_sink_sent_total``) per value of ``label``."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name == sample:
                key = s.labels.get(label, "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def metric_total(registry: CollectorRegistry, sample: str) -> float:
    return sum(metric_by_label(registry, sample, "").values())


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def prom_query(prom: str, query: str) -> list[dict[str, Any]]:
    """The instant vector of ``query`` (empty on any error: callers poll)."""
    try:
        doc = http_json(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": query}))
    except OSError:
        return []
    result: list[dict[str, Any]] = doc.get("data", {}).get("result", [])
    return result


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url} exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready in {timeout}s:\n{log.read_text()[-2000:]}")


def fast_rules(path: Path) -> Path:
    """A copy of the shipped rules evaluated every 1 s with every ``for:`` set to 0s."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    path.write_text(yaml.safe_dump(rules))
    return path


@contextmanager
def prometheus_stack(
    tmp: Path, target: str, webhook_url: str, am_port: int | None = None
) -> Iterator[dict[str, str]]:
    """Prometheus scraping ``target`` every 1 s with the fast rules, and Alertmanager
    (group_wait 1 s) sending to ``webhook_url``; skips when the binaries are missing."""
    for binary in ("prometheus", "prometheus-alertmanager"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} not installed; run deploy/local-stack/install-prometheus.sh")
    am_port = am_port or free_port()
    prom_port = free_port()
    rules = fast_rules(tmp / "rules.yml")
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {"job_name": "driftwarden", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    (tmp / "alertmanager.yml").write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "hook",
                    "group_by": ["alertname", "stream"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "hook",
                        "webhook_configs": [{"url": webhook_url, "send_resolved": True}],
                    }
                ],
            }
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        am_log, prom_log = tmp / "alertmanager.log", tmp / "prometheus.log"
        with am_log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        "prometheus-alertmanager",
                        f"--config.file={tmp / 'alertmanager.yml'}",
                        f"--storage.path={tmp / 'am-data'}",
                        f"--web.listen-address=127.0.0.1:{am_port}",
                        "--cluster.listen-address=",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        with prom_log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        "prometheus",
                        f"--config.file={tmp / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp / 'prom-data'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                        f"--web.external-url=http://127.0.0.1:{prom_port}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_ready(f"http://127.0.0.1:{am_port}/-/ready", procs[0], am_log, 20)
        _wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", procs[1], prom_log, 20)
        yield {"am": f"http://127.0.0.1:{am_port}", "prom": f"http://127.0.0.1:{prom_port}"}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
