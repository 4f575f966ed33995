"""LocaleRecommender (SPEC §5.4): resolution steps 1-4 on the keys of ``toy.LOCALE``.

Keys: en-US, en-GB, pt, pt-BR, de-AT, de-CH, de-DE, fr-CA, fr-BE.
"""

import pytest

from taar.recommenders import LocaleRecommender
from tests.fixtures import toy

pytestmark = pytest.mark.unit


@pytest.fixture
def rec():
    return LocaleRecommender().fit(locale=toy.LOCALE)


@pytest.mark.parametrize("requested, key", [
    ("en-US", "en-US"),  # 1. exact key
    ("pt-BR", "pt-BR"),  # 1. exact key, even though "pt" exists
    ("pt-PT", "pt"),     # 2. the bare language key
    ("pt_AO", "pt"),     # 2. '_' separates too
    ("de-LU", "de-DE"),  # 3. <lang>-<LANG> among de-AT, de-CH, de-DE
    ("de", "de-DE"),     # 3. same, from a bare language
    ("DE-at", "de-DE"),  # 3. exact match is case-sensitive; the subtag is lowercased
    ("fr", "fr-BE"),     # 3. no fr-FR: smallest of fr-BE, fr-CA
    ("en-AU", "en-GB"),  # 3. no en-EN: smallest of en-GB, en-US
    ("ja", None),        # 4. nothing for ja
    ("", None),
])
def test_resolution_steps(rec, requested, key):
    assert rec.resolve(requested) == key


def test_recommend_returns_the_resolved_list(rec):
    assert rec.recommend(toy.profile(locale="en-US"), 2) == [("us1@x", 0.5), ("us2@x", 0.3)]
    assert rec.recommend(toy.profile(locale="de-LU"), 5) == [("de1@x", 1.0)]


def test_profile_locale_wins_over_the_query_locale(rec):
    assert rec.recommend(toy.profile(locale="en-GB"), 1, {"locale": "pt-BR"}) == [("gb1@x", 0.6)]


def test_query_locale_is_used_when_the_profile_has_none(rec):
    p = toy.profile(locale="")
    assert rec.can_recommend(p, {"locale": "pt-BR"})
    assert rec.recommend(p, 1, {"locale": "pt-BR"}) == [("br1@x", 1.0)]


@pytest.mark.parametrize("extra", [None, {}, {"locale": ""}, {"locale": "!!"}, {"locale": "e"},
                                   {"locale": 12}, {"locale": "ja"}, {"locale": "pt-BR\n"}])
def test_cannot_recommend_without_a_usable_locale(rec, extra):
    p = toy.profile(locale="")
    assert not rec.can_recommend(p, extra)
    assert rec.recommend(p, 3, extra) == []


def test_lists_are_sorted_by_weight_then_guid_and_deduplicated():
    rec = LocaleRecommender().fit(locale={"xx": [["b", 0.2], ["c", 0.5], ["a", 0.2], ["c", 0.1]]})
    # c keeps its best weight 0.5; a and b tie at 0.2 -> a first
    assert rec.recommend(toy.profile(locale="xx"), 10) == [("c", 0.5), ("a", 0.2), ("b", 0.2)]


def test_missing_model_cannot_recommend():
    rec = LocaleRecommender().fit(locale=None)
    assert not rec.can_recommend(toy.profile(locale="en-US"))
    assert rec.recommend(toy.profile(locale="en-US"), 3) == []
