"""An existing Faust app, with driftwarden watching one of its topics.

The only driftwarden lines are the ``attach`` import and call: the app's own
agents are untouched, and driftwarden's agent (its own consumer group member, in
the app's group) checks every event of the stream's topic, dead-letters the bad
ones through the app's producer and serves Prometheus metrics on the
configuration's ``metrics.listen`` address.

Run it (from the repository root, ``pip install '.[faust]'``)::

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \\
        python deploy/examples/faust_app.py worker -l info --without-web

or ``faust -A faust_app worker -l info`` from ``deploy/examples``. Environment:
``DRIFTWARDEN_CONFIG`` (default: ``sensors.yaml`` next to this file),
``KAFKA_BOOTSTRAP_SERVERS`` (default ``127.0.0.1:9092``), ``FAUST_DATADIR``
(default ``/tmp/driftwarden-faust``). Try it on the embedded broker::

    driftwarden dev broker                      # prints 127.0.0.1:PORT
    driftwarden dev produce --bootstrap 127.0.0.1:PORT --events 100000 --drift-at 50000
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT python deploy/examples/faust_app.py worker
    curl -s 127.0.0.1:9108/metrics | grep driftwarden_invalid_events_total

The broker settings below (session timeout 6 s, heartbeat 1 s) are what the
embedded broker needs; a production cluster can keep Faust's defaults.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout

from monitor.config.schema import load_config
from monitor.runtime.faust import attach

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
CONFIG = os.environ.get("DRIFTWARDEN_CONFIG", str(Path(__file__).with_name("sensors.yaml")))

app = faust.App(
    "sensors-app",
    broker=[f"kafka://{h}" for h in BOOTSTRAP.split(",")],
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    store="memory://",
    datadir=os.environ.get("FAUST_DATADIR", "/tmp/driftwarden-faust"),
    consumer_auto_offset_reset="earliest",
)

# The app's own business logic (stands for whatever the team already runs). It reads
# raw bytes and decodes them itself: with ``value_serializer="json"`` one malformed
# event (what driftwarden dead-letters) would crash and restart this agent forever.
alerts = app.topic("iot.sensors.fail", value_serializer="json")


@app.agent(app.topic("iot.sensors", value_type=bytes, value_serializer="raw"))
async def failures(stream):  # type: ignore[no-untyped-def]
    async for raw in stream:
        try:
            reading = json.loads(raw)
        except ValueError:
            continue  # driftwarden dead-letters it
        if isinstance(reading, dict) and reading.get("status") == "fail":
            await alerts.send(value=reading)


# Driftwarden: two lines.
config = load_config(CONFIG, env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP})
monitor = attach(app, config, config.streams[0].topic or "iot.sensors", batch_size=1000)


if __name__ == "__main__":
    app.main()
