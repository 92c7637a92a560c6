"""Property-based fuzzing of every reader: mutated genuine files open or fail cleanly.

Hypothesis truncates, overwrites and inserts bytes in one file of a reader's genuine
input; opening and loading the result must either work or raise the package's own
error. A crash in a C parser would take the test process down with it, which is how
the MAT v5 segfault (``cst_neuro.io.mat5``) was found. ``FUZZ_EXAMPLES`` examples per
file (``CST_FUZZ_EXAMPLES`` raises it for long runs; see docs/reliability.md).
"""

from __future__ import annotations

import io
import os
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cst_neuro.errors import CSTNeuroError
from cst_neuro.io import open_recording
from cst_neuro.io.safe_pickle import safe_unpickle

from ._inputs import BUILDERS, TARGETS, Valid

# CPython reports "deallocated bytearray object has exported buffers" (from bytearray_dealloc,
# through sys.excepthook) for a few mutated Suite2p 1.x settings.npy files; the reader still
# returns or raises correctly. Not yet isolated (docs/reliability.md, open items), so Qt's
# excepthook capture, which would turn that report into a failure, is off here.
pytestmark = [pytest.mark.timeout(120), pytest.mark.qt_no_exception_capture]
FUZZ_EXAMPLES = int(os.environ.get("CST_FUZZ_EXAMPLES", "12"))

mutation = st.one_of(
    st.tuples(st.just("cut"), st.floats(0, 1)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("zero"), st.floats(0, 1), st.integers(1, 256)),
)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply cuts, overwrites, insertions and zeroed runs at relative positions."""
    out = bytearray(data)
    for op, where, *arg in mutations:
        at = min(int(where * len(out)), max(len(out) - 1, 0))
        if op == "cut":
            del out[at:]
        elif op == "overwrite":
            out[at : at + len(arg[0])] = arg[0]
        elif op == "insert":
            out[at:at] = arg[0]
        else:
            out[at : at + arg[0]] = bytes(len(out[at : at + arg[0]]))
    return bytes(out)


def open_and_load(valid: Valid) -> None:
    """What ``ingest`` does with a source before writing: open it and compute it all."""
    options = dict(valid.options)
    open_recording(valid.path, format=valid.reader, **options).load()


FUZZ_TARGETS = [(kind, target) for kind in BUILDERS for target in TARGETS[kind]]


@pytest.mark.parametrize(("kind", "target"), FUZZ_TARGETS)
def test_mutated_file_opens_or_fails_cleanly(valid_inputs, tmp_path_factory, kind, target):
    genuine = valid_inputs[kind]
    original = (genuine.root / target).read_bytes()
    work = genuine.copy_to(tmp_path_factory.mktemp("fuzz") / kind)

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(mutations=st.lists(mutation, min_size=1, max_size=4))
    def fuzz(mutations: list[tuple]) -> None:
        (work.root / target).write_bytes(mutate(original, mutations))
        try:
            open_and_load(work)
        except CSTNeuroError as e:
            assert str(e) and "\n" not in str(e)

    fuzz()


@settings(max_examples=10 * FUZZ_EXAMPLES, deadline=None, derandomize=True)
@given(body=st.binary(max_size=200), protocol=st.integers(2, 5))
def test_random_pickle_streams_never_run_or_crash(body: bytes, protocol: int) -> None:
    """Arbitrary opcodes after a pickle header: plain data or the package's own error."""
    stream = io.BytesIO(bytes([pickle.PROTO[0], protocol]) + body)
    try:
        safe_unpickle(stream, source="fuzz.npy")
    except CSTNeuroError as e:
        assert "fuzz.npy" in str(e)
