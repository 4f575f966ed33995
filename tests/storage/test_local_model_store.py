"""Local directory model store specifics and store URI parsing (SPEC §2.1, §2.5, §3.6).

The behaviour every backend shares is in tests/etl/test_model_store_contract.py.
"""

import json
import os
import pickle
from pathlib import Path

import pytest

from taar.storage import (
    BigtableProfileStore,
    GCSModelStore,
    LocalModelStore,
    ModelStore,
    ProfileStore,
    SQLiteProfileStore,
    open_model_store,
    open_profile_store,
    parse_model_store_uri,
    parse_profile_store_uri,
)

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    "uri, bucket, prefix",
    [("gs://models", "models", ""), ("gs://models/", "models", ""), ("gs://models/a/b/", "models", "a/b")],
)
def test_gs_uris(uri, bucket, prefix):
    store = open_model_store(uri)
    assert isinstance(store, GCSModelStore)
    assert (store.bucket_name, store.prefix) == (bucket, prefix)
    assert store.uri == (f"gs://{bucket}/{prefix}" if prefix else f"gs://{bucket}")


def test_local_uris_relative_absolute_and_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_model_store("./var/models").root == tmp_path / "var" / "models"
    assert open_model_store(str(tmp_path / "m")).root == tmp_path / "m"
    assert open_model_store(f"file://{tmp_path}/m").root == tmp_path / "m"
    assert isinstance(open_model_store("var/models"), LocalModelStore)


@pytest.mark.parametrize("uri", ["", "gs://", "gs:///prefix", "s3://bucket/x", "file://host/x", None])
def test_bad_model_store_uris(uri):
    with pytest.raises(ValueError, match="model store URI"):
        parse_model_store_uri(uri)


def test_sqlite_uris_three_and_four_slashes():
    assert parse_profile_store_uri("sqlite:///./var/profiles.sqlite3").path == Path("./var/profiles.sqlite3")
    assert parse_profile_store_uri("sqlite:////abs/p.db").path == Path("/abs/p.db")
    store = open_profile_store("sqlite:////abs/p.db")
    assert isinstance(store, SQLiteProfileStore) and store.uri == "sqlite:////abs/p.db"


def test_bigtable_uri():
    store = open_profile_store("bigtable://proj/inst/taar_profile")
    assert isinstance(store, BigtableProfileStore)
    assert (store.project, store.instance, store.table) == ("proj", "inst", "taar_profile")
    assert store.uri == "bigtable://proj/inst/taar_profile"


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite://relative.db",
        "sqlite:///",
        "bigtable://p/i",
        "bigtable://p//t",
        "bigtable://p/i/t/x",
        "redis://x",
    ],
)
def test_bad_profile_store_uris(uri):
    with pytest.raises(ValueError, match="profile store URI"):
        parse_profile_store_uri(uri)


def test_stores_satisfy_their_protocols(tmp_path):
    assert isinstance(LocalModelStore(tmp_path), ModelStore)
    assert isinstance(GCSModelStore("bucket"), ModelStore)
    assert isinstance(SQLiteProfileStore(tmp_path / "p.db"), ProfileStore)
    assert isinstance(BigtableProfileStore("p", "i", "t"), ProfileStore)


def test_gcs_store_makes_no_client_until_used_and_pickles():
    store = GCSModelStore("bucket", "prefix")
    assert store._client is None  # construction touches no credentials and no network
    clone = pickle.loads(pickle.dumps(store))
    assert (clone.bucket_name, clone.prefix, clone.uri) == ("bucket", "prefix", "gs://bucket/prefix")


# --------------------------------------------------------------------------- local layout


def test_object_and_metadata_live_in_one_version_behind_a_link(tmp_path):
    store = LocalModelStore(tmp_path)
    info = store.write_bytes("a/obj.json.bz2", b"data", {"taar-date": "20260301"})
    link = tmp_path / "a" / "obj.json.bz2"
    assert link.is_symlink() and link.read_bytes() == b"data"  # cat still shows the bytes
    version = tmp_path / "a" / ".obj.json.bz2.v" / info.generation
    assert os.readlink(link) == f".obj.json.bz2.v/{info.generation}/data"
    assert json.loads((version / "meta.json").read_text()) == {"taar-date": "20260301"}
    assert store.list() == ["a/obj.json.bz2"]


def test_writing_without_metadata_clears_it(tmp_path):
    store = LocalModelStore(tmp_path)
    store.write_bytes("obj", b"1", {"k": "v"})
    store.write_bytes("obj", b"2")
    assert store.stat("obj").metadata == {}


def test_the_older_plain_file_layout_is_read_and_converted_on_write(tmp_path):
    (tmp_path / "obj").write_bytes(b"old")
    (tmp_path / "obj.meta.json").write_text('{"taar-date": "20260301"}')
    store = LocalModelStore(tmp_path)
    assert store.read_bytes("obj") == b"old" and store.stat("obj").metadata == {"taar-date": "20260301"}
    assert store.list() == ["obj"]
    store.write_bytes("obj", b"new", {"taar-date": "20260302"})
    assert not (tmp_path / "obj.meta.json").exists()
    assert (store.read_bytes("obj"), store.stat("obj").metadata) == (b"new", {"taar-date": "20260302"})


def test_sidecar_names_are_reserved(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        LocalModelStore(tmp_path).write_bytes("obj.meta.json", b"{}")


def test_writes_leave_no_temporary_files_and_are_world_readable(tmp_path):
    store = LocalModelStore(tmp_path)
    for i in range(3):
        store.write_bytes("d/obj", b"x" * i, {"i": str(i)})
    store.copy("d/obj", "d/copy")
    # one link, one lock and one version directory per object; older versions are gone
    assert sorted(os.listdir(tmp_path / "d")) == [".copy.lock", ".copy.v", ".obj.lock", ".obj.v", "copy", "obj"]
    assert [len(os.listdir(tmp_path / "d" / v)) for v in (".copy.v", ".obj.v")] == [1, 1]
    assert (tmp_path / "d" / "obj").stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_object_and_cleans_up(tmp_path, monkeypatch):
    store = LocalModelStore(tmp_path)
    store.write_bytes("obj", b"old")

    def disk_failure(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_failure)  # fails after the bytes went to the temporary file
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes("obj", b"new")
    assert store.read_bytes("obj") == b"old"
    assert sorted(os.listdir(tmp_path)) == [".obj.lock", ".obj.v", "obj"]
    assert len(os.listdir(tmp_path / ".obj.v")) == 1  # the failed version was removed


def test_generation_changes_on_every_write_even_with_equal_size(tmp_path):
    store = LocalModelStore(tmp_path)
    generations = {store.write_bytes("obj", b"same size").generation for _ in range(5)}
    assert len(generations) == 5


def test_list_of_a_missing_root_is_empty_and_stat_of_a_directory_is_none(tmp_path):
    assert LocalModelStore(tmp_path / "nothing").list() == []
    store = LocalModelStore(tmp_path)
    store.write_bytes("dir/obj", b"x")
    assert store.stat("dir") is None


def test_a_link_following_copy_keeps_the_metadata(tmp_path):
    import shutil

    store = LocalModelStore(tmp_path / "a")
    store.write_bytes("d/obj", b"v1", {"taar-date": "20260301"})
    store.write_bytes("d/obj", b"v2", {"taar-date": "20260302"})
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # follows links: d/obj becomes a plain file
    copy = LocalModelStore(tmp_path / "b")
    assert not (tmp_path / "b" / "d" / "obj").is_symlink()
    assert (copy.read_bytes("d/obj"), copy.stat("d/obj").metadata) == (b"v2", {"taar-date": "20260302"})
    assert copy.list() == ["d/obj"]
    copy.write_bytes("d/obj", b"v3", {"taar-date": "20260303"})  # the copy converts on write
    assert (copy.read_bytes("d/obj"), store.read_bytes("d/obj")) == (b"v3", b"v2")
