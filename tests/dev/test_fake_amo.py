"""Fake AMO server (SPEC §7.6): pagination, window cap, filters, shapes, fault injection."""

import datetime as dt
import json
import time

import pytest
import requests

from taar_dev import fake_amo as fake_amo_module

pytestmark = pytest.mark.integration

SEARCH = "/api/{v}/addons/search/"


@pytest.fixture(scope="module")
def catalogue(synthetic_small):
    doc = json.loads((synthetic_small.amo / "catalogue.json").read_text(encoding="utf-8"))
    return {a["guid"]: a for a in doc["addons"]}


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:
        yield session


def _expected(catalogue, version):
    """What a full v4/v5 crawl of type=extension must return, from catalogue.json directly."""
    return {g for g, a in catalogue.items()
            if a["listed"] and a["type"] == "extension" and (version == "v4" or a["is_webextension"])}


def _crawl(http, url, params):
    results, pages = [], 0
    while url:
        body = http.get(url, params=params, timeout=10).json()
        params = None  # next links carry the query
        results.extend(body["results"])
        url = body["next"]
        pages += 1
    return results, pages, body


@pytest.mark.parametrize("version", ["v4", "v5"])
def test_full_crawl_returns_every_listed_extension_once(fake_amo, http, catalogue, version):
    results, pages, last = _crawl(http, fake_amo + SEARCH.format(v=version),
                                  {"app": "firefox", "type": "extension", "sort": "created", "page_size": 50})
    guids = [r["guid"] for r in results]
    assert len(guids) == len(set(guids))
    assert set(guids) == _expected(catalogue, version)
    assert last["count"] == len(guids)
    assert pages == last["page_count"] == -(-len(guids) // 50)
    created = [r["created"] for r in results]  # same-format ISO strings sort as times
    assert created == sorted(created, reverse=True)


def test_v5_hides_legacy_addons_that_v4_lists(fake_amo, http, catalogue):
    legacy = sorted(g for g, a in catalogue.items() if a["listed"] and not a["is_webextension"])
    assert legacy
    guid = legacy[0]
    v4 = http.get(fake_amo + SEARCH.format(v="v4"), params={"guid": guid}).json()
    v5 = http.get(fake_amo + SEARCH.format(v="v5"), params={"guid": guid}).json()
    assert [r["guid"] for r in v4["results"]] == [guid]
    assert v4["results"][0]["current_version"]["files"][0]["is_webextension"] is False
    assert v5["count"] == 0
    assert http.get(f"{fake_amo}/api/v5/addons/addon/{guid}/versions/").status_code == 404


def test_next_links_are_absolute_and_point_back(fake_amo, http):
    body = http.get(fake_amo + SEARCH.format(v="v5"), params={"page_size": 10, "page": 2, "type": "extension"}).json()
    assert body["next"].startswith(fake_amo + "/api/v5/addons/search/?")
    assert "page=3" in body["next"] and "type=extension" in body["next"]
    assert body["previous"].startswith(fake_amo) and "page=1" in body["previous"]


def test_page_size_is_capped_at_50(fake_amo, http):
    body = http.get(fake_amo + SEARCH.format(v="v4"), params={"page_size": 500}).json()
    assert len(body["results"]) == 50


def test_result_window_cap_and_invalid_page(fake_amo_factory, http):
    amo = fake_amo_factory(max_window=100)
    url = amo.base_url + SEARCH.format(v="v5")
    assert http.get(url, params={"page_size": 50, "page": 2}).status_code == 200  # results 51-100
    capped = http.get(url, params={"page_size": 50, "page": 3})  # would reach 150 > 100
    assert capped.status_code == 400
    assert "window" in capped.json()["detail"]
    # Small pages reach the window later: 25 x 4 = 100 is fine, 25 x 5 = 125 is not.
    assert http.get(url, params={"page_size": 25, "page": 4}).status_code == 200
    assert http.get(url, params={"page_size": 25, "page": 5}).status_code == 400
    beyond = http.get(url, params={"page_size": 50, "page": 2, "guid": "x@y"})
    assert beyond.status_code == 404  # one empty page exists; page 2 does not


def test_created_range_filters(fake_amo, http, catalogue):
    url = fake_amo + SEARCH.format(v="v4")
    cut = "2024-06-01T00:00:00Z"
    base = {"type": "extension", "page_size": 50}
    older, _, _ = _crawl(http, url, {**base, "created__lt": cut})
    newer, _, _ = _crawl(http, url, {**base, "created__gte": cut})
    assert older and newer
    assert all(r["created"] < cut for r in older)
    assert all(r["created"] >= cut for r in newer)
    assert {r["guid"] for r in older} | {r["guid"] for r in newer} == _expected(catalogue, "v4")
    # Every accepted form of the same bound selects the same add-ons.
    epoch = str(int(dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp()))
    counts = {form: http.get(url, params={**base, "created__lt": form}).json()["count"]
              for form in ("2024-06-01", "2024-06-01T00:00:00", "2024-06-01T00:00:00+00:00", epoch)}
    assert set(counts.values()) == {len(older)}


def test_created_after_d_is_excluded_by_end_of_d(fake_amo, http, catalogue, synthetic_small):
    end_of_d = (synthetic_small.end_date + dt.timedelta(days=1)).isoformat()
    after = {g for g in _expected(catalogue, "v4") if catalogue[g]["created"] >= end_of_d}
    assert after  # the generator puts at least one add-on after D
    body = http.get(fake_amo + SEARCH.format(v="v4"),
                    params={"type": "extension", "created__gte": end_of_d, "page_size": 50}).json()
    assert {r["guid"] for r in body["results"]} == after


def test_guid_filter(fake_amo, http, catalogue):
    wanted = sorted(_expected(catalogue, "v5"))[:3]
    body = http.get(fake_amo + SEARCH.format(v="v5"), params={"guid": ",".join([*wanted, "unknown@x"])}).json()
    assert sorted(r["guid"] for r in body["results"]) == wanted
    too_many = ",".join(f"g{i}@x" for i in range(51))
    assert http.get(fake_amo + SEARCH.format(v="v5"), params={"guid": too_many}).status_code == 400


@pytest.mark.parametrize("params", [
    {"page": "x"}, {"page": "0"}, {"page_size": "-1"}, {"created__lt": "yesterday"}, {"sort": "users"},
    {"app": "thunderbird"},
])
def test_bad_search_parameters_are_400_json(fake_amo, http, params):
    response = http.get(fake_amo + SEARCH.format(v="v5"), params=params)
    assert response.status_code == 400
    assert response.json()["detail"]


def test_unknown_route_is_404_json(fake_amo, http):
    response = http.get(fake_amo + "/api/v5/nope/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_versions_newest_first_and_paginated(fake_amo, http, catalogue):
    guid = max(_expected(catalogue, "v5"), key=lambda g: (len(catalogue[g]["versions"]), g))
    expected = [v["version"] for v in reversed(catalogue[guid]["versions"])]
    assert len(expected) >= 6  # 300 add-ons with 1-20 versions: the largest has many
    url = f"{fake_amo}/api/v5/addons/addon/{guid}/versions/"
    results, pages, last = _crawl(http, url, {"page_size": 5})
    assert [v["version"] for v in results] == expected
    assert pages == last["page_count"] == -(-len(expected) // 5)
    created = [v["file"]["created"] for v in results]
    assert created == sorted(created, reverse=True)
    # The oldest version's file is the add-on's first_create_date (SPEC §8.1 step 5).
    assert results[-1]["file"]["created"] == catalogue[guid]["versions"][0]["file"]["created"]


def test_versions_of_a_uuid_guid_url_encoded(fake_amo, http, catalogue):
    guid = sorted(g for g in _expected(catalogue, "v4") if g.startswith("{"))[0]
    response = http.get(f"{fake_amo}/api/v4/addons/addon/{requests.utils.quote(guid, safe='')}/versions/")
    assert response.status_code == 200
    assert response.json()["count"] == len(catalogue[guid]["versions"])
    assert http.get(f"{fake_amo}/api/v4/addons/addon/missing@x/versions/").status_code == 404


def test_v4_and_v5_shapes(fake_amo, http, catalogue):
    promoted = sorted(g for g in _expected(catalogue, "v5") if catalogue[g]["promoted"] == "recommended")[0]
    plain = sorted(g for g in _expected(catalogue, "v5") if catalogue[g]["promoted"] is None)[0]
    v4 = {r["guid"]: r for r in http.get(fake_amo + SEARCH.format(v="v4"),
                                         params={"guid": f"{promoted},{plain}"}).json()["results"]}
    v5 = {r["guid"]: r for r in http.get(fake_amo + SEARCH.format(v="v5"),
                                         params={"guid": f"{promoted},{plain}"}).json()["results"]}
    assert v4[promoted]["promoted"]["category"] == "recommended"
    assert v4[plain]["promoted"] is None
    assert [p["category"] for p in v5[promoted]["promoted"]] == ["recommended"]
    assert v5[plain]["promoted"] == []
    files = v4[promoted]["current_version"]["files"]
    assert isinstance(files, list) and files[0]["is_webextension"] is True
    assert "files" not in v5[promoted]["current_version"]
    assert "is_webextension" not in v5[promoted]["current_version"]["file"]
    assert v5[promoted]["ratings"]["average"] == catalogue[promoted]["ratings"]["average"]
    assert v5[promoted]["name"] == catalogue[promoted]["name"]
    assert v5[promoted]["current_version"]["version"] == catalogue[promoted]["versions"][-1]["version"]


def test_editorial_feed(fake_amo, http, synthetic_small):
    editorial = json.loads((synthetic_small.amo / "editorial.json").read_text(encoding="utf-8"))["results"]
    recommended = http.get(f"{fake_amo}/api/v5/discovery/editorial/", params={"recommended": "true"}).json()
    everything = http.get(f"{fake_amo}/api/v5/discovery/editorial/").json()
    assert [e["addon"]["guid"] for e in recommended["results"]] == [e["guid"] for e in editorial if e["recommended"]]
    assert len(everything["results"]) == len(editorial) > len(recommended["results"])
    valid = {e["addon"]["guid"] for e in recommended["results"]} - {None, ""}
    assert len(valid) == 60


# --- fault injection --------------------------------------------------------------------------


def test_fail_rate_one_fails_every_request_with_the_advertised_statuses(fake_amo_factory, http):
    amo = fake_amo_factory(fail_rate=1.0, seed=3, retry_after_s=2)
    statuses = []
    for page in range(1, 31):
        response = http.get(amo.base_url + SEARCH.format(v="v5"), params={"page": page, "page_size": 5})
        statuses.append(response.status_code)
        if response.status_code in (429, 503):
            assert response.headers["Retry-After"] == "2"
        else:
            assert "Retry-After" not in response.headers
    assert set(statuses) == {500, 503, 429}  # 30 draws over 3 statuses: all show up
    assert amo.counters["search"] == 30


def _status_sequence(amo, http, n=40):
    out = []
    for i in range(n):
        url = amo.base_url + SEARCH.format(v="v4")
        out.append(http.get(url, params={"page": 1 + i % 4, "page_size": 10}).status_code)
    return out


def test_fault_injection_is_deterministic_for_a_seed(fake_amo_factory, http):
    first = _status_sequence(fake_amo_factory(fail_rate=0.5, seed=11), http)
    again = _status_sequence(fake_amo_factory(fail_rate=0.5, seed=11), http)
    other = _status_sequence(fake_amo_factory(fail_rate=0.5, seed=12), http)
    assert first == again
    assert first != other
    assert 8 <= sum(s != 200 for s in first) <= 32  # about half of 40


def test_retrying_a_failed_url_eventually_succeeds(fake_amo_factory, http):
    amo = fake_amo_factory(fail_rate=0.5, seed=5)
    url = amo.base_url + SEARCH.format(v="v5")
    statuses = [http.get(url, params={"page_size": 3}).status_code for _ in range(20)]
    assert 200 in statuses and set(statuses) - {200}  # attempts are independent draws
    assert [r["status"] for r in amo.requests] == statuses


def test_truncated_pages_are_short_but_report_the_full_count(fake_amo_factory, fake_amo, http, catalogue):
    amo = fake_amo_factory(truncate_pages=1.0)
    params = {"type": "extension", "page_size": 50}
    results, _, last = _crawl(http, amo.base_url + SEARCH.format(v="v5"), params)
    assert last["count"] == len(_expected(catalogue, "v5"))
    assert len(results) < last["count"]
    again = http.get(amo.base_url + SEARCH.format(v="v5"), params=params).json()
    assert len(again["results"]) == 40  # every attempt: 50 minus 50 // 5
    full = http.get(fake_amo + SEARCH.format(v="v5"), params=params).json()
    assert len(full["results"]) == 50


def test_latency_is_added_to_every_response(fake_amo_factory, http):
    amo = fake_amo_factory(latency_ms=200)
    started = time.monotonic()
    assert http.get(amo.base_url + SEARCH.format(v="v5")).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_request_log_records_routes_and_statuses(fake_amo_factory, http):
    amo = fake_amo_factory()
    http.get(amo.base_url + SEARCH.format(v="v5"))
    http.get(amo.base_url + "/api/v5/discovery/editorial/")
    http.get(amo.base_url + "/api/v5/addons/addon/missing@x/versions/")
    assert [(r["route"], r["status"]) for r in amo.requests] == [("search", 200), ("editorial", 200),
                                                                  ("versions", 404)]
    assert amo.counters[200] == 2 and amo.counters[404] == 1


# --- construction and CLI ---------------------------------------------------------------------


def test_bad_rates_and_missing_catalogue_are_rejected(tmp_path, synthetic_small):
    with pytest.raises(ValueError, match="fail_rate"):
        fake_amo_module.FakeAMO(synthetic_small.amo, fail_rate=1.5)
    with pytest.raises(FileNotFoundError, match="catalogue"):
        fake_amo_module.FakeAMO(tmp_path)


def test_cli_missing_catalogue_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        fake_amo_module.main(["--catalogue", str(tmp_path / "none"), "--port", "0"])
    assert exc.value.code == 2
    assert "catalogue" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        fake_amo_module.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--catalogue", "--port", "--max-window", "--fail-rate", "--latency-ms", "--truncate-pages", "--seed"):
        assert flag in text
