"""Publishing under concurrency (SPEC §2.4): conditional latest replacement, groups, local atomicity.

Backends: the local directory store, and GCS through gcp-storage-emulator. The
emulator ignores ``ifGenerationMatch`` (first test), so the GCS cases talk to it
through :class:`tests.fixtures.gcs_preconditions.PreconditionFront`, a thin front
that enforces the precondition the way GCS does (412 ``conditionNotMet``).
"""

import datetime as dt
import logging
import threading
import types

import pytest

from taar import publishing
from taar.publishing import PublishConflict, publish, publish_group, read_artifact
from taar.storage import PreconditionFailed, open_model_store
from taar_etl.cli import run_job
from tests.fixtures.artifact_samples import group_sample, sample
from tests.fixtures.gcs_preconditions import PreconditionFront

pytestmark = pytest.mark.integration

D0, D1, D2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)
PRODUCER = "taar_test/0.0"
WHITELIST_LATEST = "addon_recommender/only_guids_top_200.json.bz2"
ITEM_MATRIX, ADDON_MAPPING = "addon_recommender/item_matrix.json.bz2", "addon_recommender/addon_mapping.json.bz2"


@pytest.fixture(scope="module")
def gcs_front(gcs_emulator):
    front = PreconditionFront(gcs_emulator.host)
    url = front.start()
    yield front, url
    front.stop()


@pytest.fixture(params=["local", "gcs"])
def store_uri(request, tmp_path, monkeypatch):
    """A fresh store URI; for GCS, with the client pointed at the precondition front."""
    if request.param == "local":
        return str(tmp_path / "models")
    emulator = request.getfixturevalue("gcs_emulator")
    _, url = request.getfixturevalue("gcs_front")
    uri = emulator.fresh_uri()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    return uri


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def version(store, name):
    return store.stat(name).metadata["taar-date"]


def test_the_bare_emulator_ignores_if_generation_match(gcs_emulator):
    # Why the front exists: with GCS this copy would fail with 412.
    store = open_model_store(gcs_emulator.fresh_uri())
    store.write_bytes("src", b"s")
    old = store.write_bytes("dst", b"1").generation
    store.write_bytes("dst", b"2")
    store.copy("src", "dst", if_generation_match=old)
    assert store.read_bytes("dst") == b"s"


def test_a_conditional_copy_fails_when_the_object_moved(store_uri):
    store = open_model_store(store_uri)
    store.write_bytes("src", b"s", {"k": "v"})
    with pytest.raises(PreconditionFailed, match="dst"):
        store.copy("src", "dst", if_generation_match="12345")  # absent, not at 12345
    created = store.copy("src", "dst", if_generation_match="0")  # "0": must not exist
    with pytest.raises(PreconditionFailed):
        store.copy("src", "dst", if_generation_match="0")
    assert store.copy("src", "dst", if_generation_match=created.generation).metadata == {"k": "v"}


def _publisher(uri, key, obj, date, results, index):
    """One publishing job: its own store client, exit code per SPEC §8.0 through run_job."""
    options = types.SimpleNamespace(log_level="INFO", date=date, seed=0)

    def body(_):
        publish(open_model_store(uri), key, obj, date, PRODUCER)

    results[index] = run_job(body, options, f"publisher-{index}")


def test_two_concurrent_publishers_one_wins_the_other_exits_1(store_uri, monkeypatch, capsys):
    store = open_model_store(store_uri)
    publish(store, "whitelist", sample("whitelist"), D0, PRODUCER)
    # Both publishers pass their date check on the same latest generation before either replaces it.
    both_checked = threading.Barrier(2, timeout=30)
    real = publishing._version_of

    def checked(store_, artifact, info):
        found = real(store_, artifact, info)
        both_checked.wait()
        return found

    monkeypatch.setattr(publishing, "_version_of", checked)
    results = [None, None]
    threads = [threading.Thread(target=_publisher, args=(store_uri, "whitelist", sample("whitelist"), d, results, i))
               for i, d in enumerate((D1, D2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1]
    winner = (D1, D2)[results.index(0)]
    assert version(store, WHITELIST_LATEST) == f"{winner:%Y%m%d}" > f"{D0:%Y%m%d}"  # never older than before
    out = capsys.readouterr().out
    assert f"latest object {store.uri}/{WHITELIST_LATEST} was replaced by another publisher" in out


class Paced:
    """A store wrapper that runs ``hooks[(phase, dst)]`` before/after a copy to ``dst``."""

    def __init__(self, store, hooks):
        self.store, self.hooks = store, hooks

    def __getattr__(self, attr):
        return getattr(self.store, attr)

    def copy(self, src, dst, if_generation_match=None):
        self.hooks.get(("before", dst), lambda: None)()
        try:
            return self.store.copy(src, dst, if_generation_match)
        finally:
            self.hooks.get(("after", dst), lambda: None)()


def test_a_group_never_keeps_members_of_two_dates(store_uri):
    """A publishes the pair for D1 and B for D2, interleaved as: A checks, A replaces item_matrix, B checks
    (sees item_matrix D1: older, go), B replaces item_matrix, A replaces addon_mapping, B's addon_mapping
    fails. Without the restore the pair would be item_matrix D2 + addon_mapping D1."""
    store = open_model_store(store_uri)
    publish_group(store, group_sample("collaborative"), D0, PRODUCER)
    a_m1, b_m1, a_m2 = threading.Event(), threading.Event(), threading.Event()
    wait = lambda event: (lambda: event.wait(30) or pytest.fail("timed out"))  # noqa: E731
    a_store = Paced(open_model_store(store_uri), {("after", ITEM_MATRIX): a_m1.set,
                                                  ("before", ADDON_MAPPING): wait(b_m1),
                                                  ("after", ADDON_MAPPING): a_m2.set})
    b_store = Paced(open_model_store(store_uri), {("after", ITEM_MATRIX): b_m1.set,
                                                  ("before", ADDON_MAPPING): wait(a_m2)})
    outcome = {}

    def run(name, s, date):
        try:
            outcome[name] = publish_group(s, group_sample("collaborative"), date, PRODUCER)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            outcome[name] = exc

    a = threading.Thread(target=run, args=("A", a_store, D1))
    a.start()
    assert a_m1.wait(30)
    b = threading.Thread(target=run, args=("B", b_store, D2))
    b.start()
    a.join(60)
    b.join(60)
    assert isinstance(outcome["B"], PublishConflict), outcome
    assert ADDON_MAPPING in str(outcome["B"]) and f"restored {ITEM_MATRIX}" in str(outcome["B"])
    assert [r.latest_replaced for r in outcome["A"]] == [True, True]
    assert version(store, ITEM_MATRIX) == version(store, ADDON_MAPPING) == "20260302"  # both D1
    for key in ("item_matrix", "addon_mapping"):
        assert read_artifact(store, key)[1].version == "20260302"  # checksums of the restored copy hold


def test_a_reader_never_sees_new_bytes_with_old_metadata(tmp_path):
    """Local store: a reader loop during 400 rewrites; every consistent read pairs bytes and metadata of one
    write (``v<i>`` with ``{"i": "<i>"}``)."""
    writer_store, reader_store = open_model_store(str(tmp_path)), open_model_store(str(tmp_path))
    writer_store.write_bytes("obj", b"v0", {"i": "0"})
    done = threading.Event()

    def rewrite():
        for i in range(1, 401):
            writer_store.write_bytes("obj", f"v{i}".encode(), {"i": str(i)})
        done.set()

    thread = threading.Thread(target=rewrite)
    thread.start()
    checked, mismatched = 0, []
    while not done.is_set() or checked == 0:
        before = reader_store.stat("obj")
        data = reader_store.read_bytes("obj")
        after = reader_store.stat("obj")
        if before.generation == after.generation:  # the same version throughout: bytes must match metadata
            checked += 1
            if data != f"v{before.metadata['i']}".encode():
                mismatched.append((data, before.metadata))
    thread.join()
    assert mismatched == [] and checked > 0
    assert reader_store.read_bytes("obj") == b"v400" and reader_store.stat("obj").metadata == {"i": "400"}
