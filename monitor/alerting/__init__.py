"""Findings to alerts: the episode engine, payload formats and delivery to topics and webhooks."""
