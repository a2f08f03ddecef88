"""Real NAB series as device signals: which labelled anomaly windows a detector fires in."""

from __future__ import annotations

import pytest

from bench.fleet_nab import SERIES, nab_report


@pytest.mark.slow
def test_nab_series_as_devices_report_windows_and_false_detections() -> None:
    results, detections = nab_report()
    assert {r.series for r in results} == set(SERIES)
    assert len(results) == 11  # every labelled window of the four series is reported
    hit = {(r.series, r.window) for r in results if r.first is not None}
    for r in results:
        first = r.first
        print(r.series, r.window, "-" if first is None else (first.detector, first.at - r.start))
    outside = [d for d in detections if d.window is None]
    print("outside windows:", [(d.series, d.detector, d.at) for d in outside])
    # every EC2 latency window and the machine's failure window are caught
    assert {("ec2_request_latency_system_failure", w) for w in range(3)} <= hit
    assert ("machine_temperature_system_failure", 3) in hit
    # the slow temperature series stay quiet outside their windows but for two spikes
    assert not [d for d in outside if d.series == "ambient_temperature_system_failure"]
    assert len([d for d in outside if d.series == "machine_temperature_system_failure"]) <= 2
