"""Model store contract (SPEC §2.1-2.6), run against every backend: local directory and GCS emulator.

The first half checks the six store operations; the second half checks the publishing
protocol and the reader on top of them, where the backends differ (sidecar files vs
custom metadata, atomic rename vs server-side copy).
"""

import datetime as dt
import hashlib
import json
import pickle
import threading

import pytest

from taar import artifacts, codecs
from taar.artifacts import ArtifactError
from taar.publishing import publish, publish_group, read_artifact
from taar.storage import ArtifactNotFound, ChecksumMismatch, ObjectNotFound, open_model_store
from tests.fixtures.artifact_samples import SINGLE_KEYS, group_sample, sample

pytestmark = pytest.mark.integration

D1, D2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
PRODUCER = "taar_test/0.0"


@pytest.fixture
def store(model_store_uri):
    return open_model_store(model_store_uri)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- operations


def test_write_then_stat_and_read(store):
    store.write_bytes("dir/obj.json", b'{"a":1}', {"k": "v", "taar-date": "20260301"})
    info = store.stat("dir/obj.json")
    assert store.read_bytes("dir/obj.json") == b'{"a":1}'
    assert info.name == "dir/obj.json"
    assert info.size == 7
    assert dict(info.metadata) == {"k": "v", "taar-date": "20260301"}
    assert info.updated.tzinfo is not None and info.updated.utcoffset() == dt.timedelta(0)
    assert isinstance(info.generation, str) and info.generation


def test_missing_object(store):
    assert store.stat("nope.json") is None
    with pytest.raises(ObjectNotFound, match="nope.json"):
        store.read_bytes("nope.json")


def test_rewrite_replaces_bytes_metadata_and_generation(store):
    first = store.write_bytes("obj", b"one", {"k": "1"})
    second = store.write_bytes("obj", b"two")
    assert store.read_bytes("obj") == b"two"
    assert dict(store.stat("obj").metadata) == {}  # no metadata given: the old metadata is gone
    assert second.generation != first.generation


def test_copy_carries_bytes_and_metadata(store):
    store.write_bytes("src.bz2", b"payload", {"taar-sha256": "x"})
    store.write_bytes("dst.bz2", b"old", {"other": "y"})
    info = store.copy("src.bz2", "dst.bz2")
    assert store.read_bytes("dst.bz2") == b"payload"
    assert dict(info.metadata) == {"taar-sha256": "x"}
    assert dict(store.stat("dst.bz2").metadata) == {"taar-sha256": "x"}


def test_copy_of_missing_source(store):
    with pytest.raises(ObjectNotFound):
        store.copy("missing", "dst")


def test_list_filters_by_prefix_sorts_and_hides_sidecars(store):
    assert store.list() == []
    for name in ("b/2.json", "a/1.json", "b/1.json", "c.json"):
        store.write_bytes(name, b"x", {"m": "1"})
    assert store.list() == ["a/1.json", "b/1.json", "b/2.json", "c.json"]
    assert store.list("b/") == ["b/1.json", "b/2.json"]
    assert store.list("c") == ["c.json"]


def test_delete_removes_only_the_prefix(store):
    for name in ("tmp/1", "tmp/2", "keep/1"):
        store.write_bytes(name, b"x", {"m": "1"})
    assert store.delete("tmp/") == 2
    assert store.list() == ["keep/1"]
    assert store.delete("tmp/") == 0
    with pytest.raises(ValueError, match="non-empty prefix"):
        store.delete("")


def test_invalid_names_are_refused(store):
    for name in ("", "/abs", "a/../b", "dir/"):
        with pytest.raises(ValueError):
            store.write_bytes(name, b"x")


def test_pickled_store_reads_the_same(store):
    store.write_bytes("obj", b"bytes", {"k": "v"})
    clone = pickle.loads(pickle.dumps(store))
    assert clone.uri == store.uri
    assert clone.read_bytes("obj") == store.read_bytes("obj")
    assert clone.stat("obj") == store.stat("obj")


def test_readers_see_whole_objects_during_rewrites(store):
    # Two payloads of different sizes; a torn write would show as anything else.
    old, new = b"o" * 200_000, b"n" * 300_000
    store.write_bytes("big", old)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(store.read_bytes("big"))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20):
            store.write_bytes("big", new if i % 2 == 0 else old)
    finally:
        stop.set()
        thread.join()
    assert seen <= {old, new} and seen


# --------------------------------------------------------------------------- publishing


@pytest.mark.parametrize("key", SINGLE_KEYS)
def test_publish_writes_dated_copy_and_latest_with_metadata(store, key):
    artifact = artifacts.get(key)
    result = publish(store, key, sample(key), D1, PRODUCER)

    dated, latest = artifact.dated_name(D1), artifact.name
    assert store.list() == sorted([dated, latest])
    data = store.read_bytes(latest)
    assert store.read_bytes(dated) == data
    expected_meta = {"taar-date": "20260301", "taar-sha256": sha256(data), "taar-producer": PRODUCER}
    assert dict(store.stat(dated).metadata) == expected_meta
    assert dict(store.stat(latest).metadata) == expected_meta
    assert codecs.decode(data, latest) == sample(key)
    assert (result.latest_replaced, result.sha256, result.previous_version) == (True, sha256(data), None)

    obj, descriptor = read_artifact(store, key)
    assert obj == sample(key)
    assert (descriptor.version, descriptor.name, descriptor.sha256) == ("20260301", latest, sha256(data))
    assert descriptor.uri == f"{store.uri}/{latest}"
    assert descriptor.size == len(data)


@pytest.mark.parametrize("group", ["collaborative", "similarity"])
def test_publish_group_writes_every_member(store, group):
    results = publish_group(store, group_sample(group), D1, PRODUCER)
    assert [r.key for r in results] == list(artifacts.GROUPS[group])
    for key, obj in group_sample(group).items():
        assert read_artifact(store, key)[0] == obj
        assert read_artifact(store, key, D1)[1].version == "20260301"


def test_refused_model_leaves_latest_byte_identical(store):
    publish(store, "ranking", sample("ranking"), D1, PRODUCER)
    before = store.read_bytes("taar/lite/guid_install_ranking.json.bz2")
    with pytest.raises(ArtifactError, match="ranking"):
        publish(store, "ranking", {"null": 3}, D2, PRODUCER)
    assert store.read_bytes("taar/lite/guid_install_ranking.json.bz2") == before
    assert store.stat("taar/lite/guid_install_ranking.json.20260302.bz2") is None


def test_backfill_writes_only_the_dated_copy(store):
    publish(store, "ranking", {"a@x": 2}, D2, PRODUCER)
    result = publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)
    assert result.latest_replaced is False and result.previous_version == "20260302"
    assert read_artifact(store, "ranking")[0] == {"a@x": 2}
    assert read_artifact(store, "ranking", D1)[0] == {"a@x": 1}


def test_rerun_of_the_same_date_replaces_latest(store):
    publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)
    assert publish(store, "ranking", {"a@x": 5}, D1, PRODUCER).latest_replaced
    assert read_artifact(store, "ranking")[0] == {"a@x": 5}


def test_force_latest_overrides_the_date_rule(store):
    publish(store, "ranking", {"a@x": 2}, D2, PRODUCER)
    assert publish(store, "ranking", {"a@x": 1}, D1, PRODUCER, force_latest=True).latest_replaced
    obj, descriptor = read_artifact(store, "ranking")
    assert (obj, descriptor.version) == ({"a@x": 1}, "20260301")


def test_invalid_group_member_replaces_no_latest(store):
    publish_group(store, group_sample("collaborative"), D1, PRODUCER)
    before = {name: store.read_bytes(name) for name in store.list()}
    models = group_sample("collaborative")
    models["addon_mapping"]["2"]["id"] = "a@x"  # second member now repeats a GUID
    with pytest.raises(ArtifactError, match="appears twice"):
        publish_group(store, models, D2, PRODUCER)
    assert {name: store.read_bytes(name) for name in store.list()} == before


class FailingWrites:
    """A store proxy whose writes of names containing ``fail_on`` raise OSError."""

    def __init__(self, store, fail_on):
        self.store, self.fail_on = store, fail_on

    def __getattr__(self, attr):
        return getattr(self.store, attr)

    def write_bytes(self, name, data, metadata=None):
        if self.fail_on in name:
            raise OSError(f"injected write failure for {name}")
        return self.store.write_bytes(name, data, metadata)


def test_group_is_staged_in_full_before_any_latest_is_replaced(store):
    publish_group(store, group_sample("collaborative"), D1, PRODUCER)
    latest_matrix = store.read_bytes("addon_recommender/item_matrix.json.bz2")
    models = group_sample("collaborative")
    models["item_matrix"][0]["features"] = [9.0, 9.0]
    with pytest.raises(OSError, match="injected"):
        publish_group(FailingWrites(store, "addon_mapping.json.20260302"), models, D2, PRODUCER)
    # the first member's dated copy was written, but its latest object was not touched
    assert store.stat("addon_recommender/item_matrix.json.20260302.bz2") is not None
    assert store.read_bytes("addon_recommender/item_matrix.json.bz2") == latest_matrix


def test_reader_falls_back_to_plain_json_without_metadata(store):
    data = json.dumps({"a@x": 7}, indent=2).encode()
    store.write_bytes("taar/lite/guid_install_ranking.json", data)
    obj, descriptor = read_artifact(store, "ranking")
    assert obj == {"a@x": 7}
    assert (descriptor.name, descriptor.version) == ("taar/lite/guid_install_ranking.json", "unknown")
    assert descriptor.sha256 == sha256(data)


def test_checksum_mismatch_raises(store):
    publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)
    latest = "taar/lite/guid_install_ranking.json.bz2"
    metadata = dict(store.stat(latest).metadata)
    store.write_bytes(latest, codecs.encode({"a@x": 666}), metadata)  # bytes changed, checksum kept
    with pytest.raises(ChecksumMismatch, match="guid_install_ranking"):
        read_artifact(store, "ranking")


def test_absent_artifact_names_the_objects_tried(store):
    with pytest.raises(ArtifactNotFound) as excinfo:
        read_artifact(store, "ranking")
    assert excinfo.value.tried == (
        "taar/lite/guid_install_ranking.json.bz2",
        "taar/lite/guid_install_ranking.json",
    )


def test_write_errors_propagate(model_store_uri, tmp_path):
    if model_store_uri.startswith("gs://"):
        from google.api_core.exceptions import NotFound

        broken = open_model_store("gs://no-such-bucket-for-taar/x")
        expected = NotFound
    else:
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where the store directory should be")
        broken = open_model_store(str(blocker / "models"))
        expected = OSError
    with pytest.raises(expected) as excinfo:
        publish(broken, "ranking", {"a@x": 1}, D1, PRODUCER)
    assert not isinstance(excinfo.value, ArtifactError)
