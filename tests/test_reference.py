"""Generated references are current; every example configuration loads; demo.yaml is the demo."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from monitor.config.alerts import SinkConfig
from monitor.config.schema import Config, load_config
from monitor.dev import reference
from monitor.dev.demo import demo_config

EXAMPLES = reference.ROOT / "deploy" / "examples"
ENV = {
    "SLACK_WEBHOOK_URL": "https://hooks.slack.test/T/B/x",
    "ML_WEBHOOK_URL": "https://ml.example.test/hook",
    "ML_WEBHOOK_SECRET": "s3cret",
    "WEBHOOK_URL": "https://on-call.example.test/hook",
    "WEBHOOK_SECRET": "s3cret",
    "PAGERDUTY_ROUTING_KEY": "R0UTE",
}


def test_generated_references_are_current() -> None:
    stale = [
        str(p.relative_to(reference.ROOT))
        for p, render in reference.outputs().items()
        if not p.exists() or p.read_text(encoding="utf-8") != render()
    ]
    assert not stale, f"stale, run `python -m monitor.dev.reference` (make docs): {stale}"
    assert reference.main(["--check"]) == 0


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    config = load_config(path, env=ENV)
    assert config.streams


def test_demo_yaml_is_the_demo_config() -> None:
    shipped = load_config(EXAMPLES / "demo.yaml", env={})
    assert shipped == reference.demo_config_for_yaml()
    assert shipped == demo_config(
        "127.0.0.1:9092", 9108, webhook_url="http://127.0.0.1:8080/alerts"
    )


def test_alerts_example_uses_every_sink_type() -> None:
    config = load_config(EXAMPLES / "alerts.yaml", env=ENV)
    assert config.alerts is not None
    union = typing.get_args(SinkConfig)[0]  # Annotated[Union[...], discriminator]
    every = {typing.get_args(m.model_fields["type"].annotation)[0] for m in typing.get_args(union)}
    assert {s.type for s in config.alerts.sinks} == every


def test_configuration_reference_names_every_key() -> None:
    text = (reference.ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    for model in reference._models(Config):
        assert f"## {model.__name__}" in text
        for key in model.model_fields:
            assert re.search(rf"^\| `{re.escape(key)}` \|", text, re.M), (model.__name__, key)
    assert "(undocumented)" not in text, "describe new keys in monitor.dev.reference.KEY_DOCS"


def test_metrics_reference_names_every_family() -> None:
    text = (reference.ROOT / "docs/metrics.md").read_text(encoding="utf-8")
    for family in reference._families():
        assert f"`{family._name}" in text


def test_readme_yaml_snippets_validate() -> None:
    import yaml

    from monitor.config.schema import parse_config

    text = (reference.ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("```\nmake demo") and "\nmake test" in text.split("```")[1]
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    env = ENV | {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_PASSWORD": "p"}
    for block in blocks:
        doc = yaml.safe_load(block)
        raw = {
            "kafka": {"bootstrap.servers": "b:9092"},
            "streams": [{"name": "s", "topic": "t", "fields": {"a": {"type": "float"}}}],
        } | doc
        parse_config(raw, env=env)
