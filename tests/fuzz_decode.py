"""Coverage-guided fuzzing of the batch decoder and schema checks with atheris.

Run briefly (a few thousand inputs) from the repository root:

    python tests/fuzz_decode.py -atheris_runs=3000 /tmp/fuzz-corpus tests/corpus/decode

libFuzzer writes new coverage-increasing inputs into the first directory and any
input that breaks an invariant of ``tests.fuzz_targets.check_payload`` as
``crash-*`` (``-artifact_prefix=``). Keep the interesting ones in
``tests/corpus/decode/``: the test suite replays that directory on every run
(``tests/test_fuzz_decode.py``); ``-merge=1 tests/corpus/decode /tmp/fuzz-corpus``
adds only inputs that reach new code.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    import atheris

    # Not instrumented: numba cannot compile bytecode with atheris's branch hooks in it.
    import monitor.pipeline.jsonscan

    with atheris.instrument_imports():
        import monitor.pipeline.decode
        import monitor.pipeline.event_time
        import monitor.pipeline.payload_checks  # noqa: F401
        from tests.fuzz_targets import check_payload

    def one(data: bytes) -> None:
        check_payload(data)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
