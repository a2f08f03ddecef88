"""Service defaults for ADWIN, calibrated for 20 fields x 10M events without a false alarm.

The service passes ``SERVICE_DEFAULTS`` to :class:`detectors.adwin.ADWIN` for every
key the user's config does not set. Requirement: a stationary stream of 20 fields
raises no drift verdict over 10M events (200M field-values), while real shifts are
still caught. Measured by ``bench/adwin_calibration.py`` (figures and machine in
bench/RESULTS.md, "### ADWIN service defaults"), on 10M-value streams standardised to
mean 0, sd 1, fed in batches of 10 000:

========================  ==========================  ================================
stream                    false changes (defaults)    ADWIN's own defaults (value mode)
========================  ==========================  ================================
N(0, 1)                   0 in 1e9 values             ~1 per 3.6e6 values
Gamma(2), skewed          0 in 1e9 values             ~1 per 1.1e6 values
Student t, 3 df           0 in 1e9 values             ~1 per 4.2e4 values
========================  ==========================  ================================

Delay (values after a mean shift, following 1M stationary values, until the change is
reported; median / max of 20 runs per distribution, worst of the three): 0.25 sd
5674 / 6932, 0.5 sd 3094 / 3775, 1.0 sd 1839 / 2415. Expected false alarms over the
requirement's 2e8 values: ~0.04 on t3 (outlier model below, which matches the
measured rates at other settings), ~4e-4 on N(0, 1) (scaled by ``delta``).

Why these values:

* ``mode="subwindow"``, ``subwindow=1000``: a tenth of value mode's false alarms at
  ADWIN's default delta, ~4x cheaper per value; in this mode ``delta`` costs almost
  no delay (detections are quantised to chunk ends anyway).
* ``delta=1e-7``: on light-tailed data false alarms scale with ``delta``
  (N(0, 1), sub-window mode: 4e-8 per value at 2e-3, none in 2e8 values at <= 1e-4;
  scaled by ``delta``, ~2e-12 per value at 1e-7, i.e. 4e-4 expected over 2e8).
* ``min_window_length=10_000``: heavy tails are what breaks the requirement, and
  ``delta`` cannot fix them. On Student t (3 df) the false alarms are single
  outliers of 500-1100 sd landing in the newest sub-window; they barely depend on
  ``delta`` (sub-window mode, 1000: 48 per 2e8 values at 2e-3, still 9 at 1e-7) because
  ``delta`` enters the bound through ``sqrt(ln(1/delta))``. Requiring both sides of a
  cut to hold ``min_window_length`` values (river's bound uses ``n - L + 1``, so a
  side of ``L + k`` values counts as ``k + 1``) dilutes one outlier: the smallest
  outlier that can cut grows like ``sqrt(L)`` (~12 sqrt(L) sd), and the rate falls as
  the tail beyond it: 4e-9 per value at L=2000, 1e-9 at L=10 000 (delta 1e-6), none
  in 1e9 at L=10 000 with delta 1e-7. Model: a cut needs an outlier of about
  ``2 sqrt(2 d' L)`` sd (1250 sd here); t3's tail beyond it is 2e-10 per value.

How to trade:

* Faster detection on fields known to be light-tailed (or clipped upstream):
  ``min_window_length=5``, ``delta=1e-6`` gives a 0.5 sd delay of 742-866 values
  median (1410 max) with no false change in 2e8 N(0, 1) or Gamma values, but 10 in
  2e8 on t3. ``delta`` buys little: 1e-5 instead of 1e-7 shortens delays ~10-15%.
* Smaller ``subwindow`` (100-250) cuts the delay further in light-tailed data, at
  7-23x the outlier false alarms of 1000 (t3, min_window_length 5).
* ``mode="value"`` with ``min_window_length=10_000`` is ~15% quicker (0.5 sd: 2466-2668
  median) at ~2x the cost per event; its false-alarm rate is measured on 4e7 values
  only (none).
* Any mean-based test that reports a shift of ``s`` sd after ``k`` values also
  reports a single outlier of about ``s * k`` sd; so on a heavy-tailed field the delay
  has a floor set by the tail, whatever the parameters. Clipping values to the
  baseline's extreme quantiles before ADWIN would remove that floor.
* ADWIN is not scale-invariant: its ``2/3 d' m`` term is in the data's units. These
  figures are for sd = 1; on fields with sd << 1 that term dominates and shifts are
  found later; on fields with sd >> 1 it vanishes and false alarms rise slightly.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["SERVICE_DEFAULTS", "AdwinParams"]


class AdwinParams(TypedDict, total=False):
    """Constructor arguments of :class:`detectors.adwin.ADWIN` a configuration may set."""

    delta: float
    clock: int
    max_buckets: int
    min_window_length: int
    grace_period: int
    mode: str
    subwindow: int


SERVICE_DEFAULTS: AdwinParams = {
    "mode": "subwindow",
    "subwindow": 1000,
    "delta": 1e-7,
    "min_window_length": 10_000,
}
