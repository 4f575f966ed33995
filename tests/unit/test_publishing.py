"""Publishing protocol details on a local store (SPEC §2.4-2.6, §2.10, §9.3).

Backend-sensitive behaviour (metadata, copies, fallbacks, write errors) is checked on
every backend in tests/etl/test_model_store_contract.py; this module covers the rules
that do not depend on the backend: argument checks, ordering, group consistency,
rollback, metrics sidecars and reads racing a publish.
"""

import datetime as dt

import pytest

import taar
from taar import artifacts, codecs
from taar.artifacts import ArtifactError
from taar.codecs import DecodeError
from taar.publishing import (
    READ_ATTEMPTS,
    producer_tag,
    publish,
    publish_group,
    publish_metrics,
    read_artifact,
    rollback,
)
from taar.storage import ArtifactNotFound, ChecksumMismatch, LocalModelStore
from tests.fixtures.artifact_samples import group_sample, sample

pytestmark = pytest.mark.unit

D1, D2, D3 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)
PRODUCER = "taar_test/0.0"
MATRIX, MAPPING = "addon_recommender/item_matrix.json.bz2", "addon_recommender/addon_mapping.json.bz2"


@pytest.fixture
def store(tmp_path):
    return LocalModelStore(tmp_path / "models")


class Recording:
    """A store proxy that logs every write and copy, in order."""

    def __init__(self, store):
        self.store, self.log = store, []

    def __getattr__(self, attr):
        return getattr(self.store, attr)

    def write_bytes(self, name, data, metadata=None):
        self.log.append(("write", name))
        return self.store.write_bytes(name, data, metadata)

    def copy(self, src, dst, if_generation_match=None):
        self.log.append(("copy", dst))
        return self.store.copy(src, dst, if_generation_match)


def test_producer_tag_is_job_and_package_version():
    assert producer_tag("taar_locale") == f"taar_locale/{taar.__version__}"


def test_invalid_model_writes_nothing(store):
    with pytest.raises(ArtifactError, match="whitelist: GUIDs are not sorted"):
        publish(store, "whitelist", ["b@x", "a@x"], D1, PRODUCER)
    assert store.list() == []


def test_unencodable_model_writes_nothing(store):
    with pytest.raises(ValueError):
        publish(store, "amo_whitelist_db", {"a@x": {"guid": "a@x", "score": float("nan")}}, D1, PRODUCER)
    assert store.list() == []


def test_date_must_be_a_date(store):
    with pytest.raises(TypeError, match="datetime.date"):
        publish(store, "ranking", {"a@x": 1}, "2026-03-01", PRODUCER)
    assert store.list() == []


def test_group_member_cannot_be_published_alone(store):
    with pytest.raises(ValueError, match="publish_group"):
        publish(store, "item_matrix", sample("item_matrix"), D1, PRODUCER)
    assert store.list() == []


@pytest.mark.parametrize(
    "models",
    [
        {"item_matrix": sample("item_matrix")},
        {"item_matrix": sample("item_matrix"), "donors": sample("donors")},
        {"ranking": sample("ranking")},
    ],
)
def test_publish_group_needs_exactly_one_whole_group(store, models):
    with pytest.raises(ValueError, match="group"):
        publish_group(store, models, D1, PRODUCER)
    assert store.list() == []


def test_group_rules_are_checked_before_any_write(store):
    models = group_sample("collaborative")
    del models["addon_mapping"]["2"]  # mapping keys {1} != matrix ids {1, 2}
    with pytest.raises(ArtifactError, match="key set differs"):
        publish_group(store, models, D1, PRODUCER)
    assert store.list() == []


def test_group_stages_every_member_then_replaces_latest_in_catalogue_order(store):
    recording = Recording(store)
    publish_group(recording, group_sample("collaborative"), D1, PRODUCER)
    assert recording.log == [
        ("write", "addon_recommender/item_matrix.json.20260301.bz2"),
        ("write", "addon_recommender/addon_mapping.json.20260301.bz2"),
        ("copy", MATRIX),
        ("copy", MAPPING),
    ]


def test_group_backfill_replaces_no_member_when_one_latest_is_newer(store):
    publish_group(store, group_sample("collaborative"), D1, PRODUCER)
    # item_matrix's latest alone moves to D3 (as after a manual rollback gone wrong)
    store.copy("addon_recommender/item_matrix.json.20260301.bz2", MATRIX)
    store.write_bytes(
        MATRIX, store.read_bytes(MATRIX), {**store.stat(MATRIX).metadata, "taar-date": "20260303"}
    )
    results = publish_group(store, group_sample("collaborative"), D2, PRODUCER)
    assert [r.latest_replaced for r in results] == [False, False]
    assert read_artifact(store, "addon_mapping")[1].version == "20260301"


def test_latest_without_metadata_counts_as_older(store):
    store.write_bytes("taar/lite/guid_install_ranking.json.bz2", codecs.encode({"old@x": 1}))
    result = publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)
    assert (result.latest_replaced, result.previous_version) == (True, "unknown")
    assert read_artifact(store, "ranking")[0] == {"a@x": 1}


def test_publish_result_fields(store):
    result = publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)
    data = store.read_bytes("taar/lite/guid_install_ranking.json.bz2")
    assert result.key == "ranking" and result.date == "20260301"
    assert result.dated_name == "taar/lite/guid_install_ranking.json.20260301.bz2"
    assert result.latest_name == "taar/lite/guid_install_ranking.json.bz2"
    assert result.size == len(data)


# --------------------------------------------------------------------------- metrics sidecars


def test_publish_metrics_writes_the_sidecar_and_its_dated_copy(store):
    metrics = {"job": "taar_locale", "date": "2026-03-01", "evaluation": None}
    result = publish_metrics(store, "taar_locale", "taar/locale/", metrics, D1, PRODUCER)
    assert store.list() == [
        "taar/locale/taar_locale_metrics.json.20260301.bz2",
        "taar/locale/taar_locale_metrics.json.bz2",
    ]
    assert result.latest_replaced
    artifact = artifacts.metrics_artifact("taar_locale", "taar/locale")
    obj, descriptor = read_artifact(store, artifact)
    assert obj == metrics and descriptor.version == "20260301"


def test_empty_metrics_are_refused(store):
    with pytest.raises(ArtifactError, match="metrics"):
        publish_metrics(store, "taar_locale", "taar/locale", {}, D1, PRODUCER)
    assert store.list() == []


# --------------------------------------------------------------------------- rollback


def test_rollback_of_a_group_restores_every_member(store):
    first = group_sample("similarity")
    second = group_sample("similarity")
    second["lr_curves"] = [[0.0, [3.0, 1.0]]]
    publish_group(store, first, D1, PRODUCER)
    publish_group(store, second, D2, PRODUCER)
    results = rollback(store, "similarity", D1)
    assert [(r.key, r.previous_version) for r in results] == [
        ("donors", "20260302"),
        ("lr_curves", "20260302"),
    ]
    obj, descriptor = read_artifact(store, "lr_curves")
    assert (obj, descriptor.version) == (first["lr_curves"], "20260301")
    assert descriptor.sha256 == read_artifact(store, "lr_curves", D1)[1].sha256


def test_rollback_of_a_group_member_rolls_back_its_group(store):
    publish_group(store, group_sample("collaborative"), D1, PRODUCER)
    models = group_sample("collaborative")
    models["item_matrix"][0]["features"] = [1.0, 1.0]
    publish_group(store, models, D2, PRODUCER)
    assert [r.key for r in rollback(store, "item_matrix", D1)] == ["item_matrix", "addon_mapping"]
    assert read_artifact(store, "item_matrix")[1].version == "20260301"
    assert read_artifact(store, "addon_mapping")[1].version == "20260301"


def test_rollback_to_a_missing_date_changes_nothing(store):
    publish(store, "ranking", {"a@x": 1}, D2, PRODUCER)
    before = store.read_bytes("taar/lite/guid_install_ranking.json.bz2")
    with pytest.raises(ArtifactNotFound, match="20260301"):
        rollback(store, "ranking", D1)
    assert store.read_bytes("taar/lite/guid_install_ranking.json.bz2") == before


def test_rollback_revalidates_the_dated_copy(store):
    publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)
    publish(store, "ranking", {"a@x": 2}, D2, PRODUCER)
    # an operator-edited dated copy: consistent checksum, content breaks the rules
    store.write_bytes("taar/lite/guid_install_ranking.json.20260301.bz2", codecs.encode({"a@x": 0}))
    with pytest.raises(ArtifactError, match="int >= 1"):
        rollback(store, "ranking", D1)
    assert read_artifact(store, "ranking")[0] == {"a@x": 2}


# --------------------------------------------------------------------------- reading


def test_read_of_a_dated_copy(store):
    publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)
    publish(store, "ranking", {"a@x": 2}, D2, PRODUCER)
    obj, descriptor = read_artifact(store, "ranking", D1)
    assert obj == {"a@x": 1}
    assert (descriptor.name, descriptor.version) == (
        "taar/lite/guid_install_ranking.json.20260301.bz2",
        "20260301",
    )


def test_compressed_latest_wins_over_plain_json(store):
    store.write_bytes("taar/lite/guid_install_ranking.json", b'{"plain@x": 1}')
    publish(store, "ranking", {"bz2@x": 1}, D1, PRODUCER)
    assert read_artifact(store, "ranking")[0] == {"bz2@x": 1}


def test_undecodable_object_raises_decode_error(store):
    store.write_bytes("taar/lite/guid_install_ranking.json.bz2", b"not bz2 at all")
    with pytest.raises(DecodeError, match="guid_install_ranking"):
        read_artifact(store, "ranking")


def test_read_racing_a_publish_retries_and_returns_the_new_object(store):
    publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)

    class RepublishAfterFirstRead:
        """Republishes the artifact right after the reader's first read of the latest object."""

        def __init__(self, inner):
            self.inner, self.reads = inner, 0

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

        def read_bytes(self, name):
            data = self.inner.read_bytes(name)
            self.reads += 1
            if self.reads == 1:
                publish(self.inner, "ranking", {"a@x": 2}, D2, PRODUCER)
            return data

    racing = RepublishAfterFirstRead(store)
    obj, descriptor = read_artifact(racing, "ranking")
    assert (obj, descriptor.version) == ({"a@x": 2}, "20260302")
    assert racing.reads == 2


def test_checksum_mismatch_is_retried_before_raising(store):
    publish(store, "ranking", {"a@x": 1}, D1, PRODUCER)
    latest = "taar/lite/guid_install_ranking.json.bz2"
    store.write_bytes(latest, codecs.encode({"a@x": 9}), store.stat(latest).metadata)

    class CountingReads:
        def __init__(self, inner):
            self.inner, self.reads = inner, 0

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

        def read_bytes(self, name):
            self.reads += 1
            return self.inner.read_bytes(name)

    counting = CountingReads(store)
    with pytest.raises(ChecksumMismatch):
        read_artifact(counting, "ranking")
    assert counting.reads == READ_ATTEMPTS == 3
