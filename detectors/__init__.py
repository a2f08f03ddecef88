"""Online drift and data-quality detectors: pure numpy in, findings out.

This package imports nothing else of driftwarden's; ``monitor`` wires it to Kafka,
Prometheus and alerts.
"""

from detectors.base import Detector, DetectorError, Finding, Mergeable, WindowBounds

__all__ = ["Detector", "DetectorError", "Finding", "Mergeable", "WindowBounds"]
