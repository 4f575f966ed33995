import hashlib

import pytest

from taar import hashing
from taar.hashing import hash_client_id, is_test_id, item_id, java_string_hashcode

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "s, expected",
    [
        ("", 0),
        ("a", 97),
        # 31*97 + 98 = 3105
        ("ab", 3105),
        # Java: "hello".hashCode() == 99162322
        ("hello", 99162322),
        # overflows to negative in Java: "polygenelubricants".hashCode() == Integer.MIN_VALUE
        ("polygenelubricants", -2147483648),
        # U+1F600 is the surrogate pair D83D DE00: 31*0xD83D + 0xDE00 = 1716067 + 56832
        ("\U0001F600", 1772899),
    ],
)
def test_java_string_hashcode_matches_java(s, expected):
    assert java_string_hashcode(s) == expected
    assert hashing.reference_java_string_hashcode(s) == expected


def test_ascii_fast_loop_equals_the_masked_utf16_loop():
    """Random ASCII strings of every length up to past UNMASKED_MAX_CHARS (both paths), control
    characters and DEL included; non-ASCII strings go to the reference loop."""
    import random

    rng = random.Random(5)
    limit = hashing.UNMASKED_MAX_CHARS
    strings = ["".join(chr(rng.randrange(128)) for _ in range(n)) for n in range(limit + 40) for _ in range(3)]
    strings += ["{d10d0bf8-f5b5-c8b4-a8b2-2b9879e08c5d}", "uBlock0@raymondhill.net", "\x7f" * 300, "é", "a\U0001F600"]
    negative = 0
    for s in strings:
        assert java_string_hashcode(s) == hashing.reference_java_string_hashcode(s), s
        negative += java_string_hashcode(s) < 0
    assert 0 < negative < len(strings)  # both signs reached


def test_item_id_masks_to_23_bits():
    # -2147483648 & 0x7FFFFF == 0 and 99162322 & 0x7FFFFF == 99162322 - 11*2^23 = 6887634
    assert item_id("polygenelubricants") == 0
    assert item_id("hello") == 99162322 % (1 << 23) == 6887634


def test_hash_client_id_is_lowercase_sha256_hex():
    digest = hash_client_id("00000000-1111-2222-3333-444444444444")
    assert digest == hashlib.sha256(b"00000000-1111-2222-3333-444444444444").hexdigest()
    assert len(digest) == 64 and digest == digest.lower()


def test_test_weight_is_sha256_mod_100():
    guid = "uBlock0@raymondhill.net"
    expected = int(hashlib.sha256(guid.encode()).hexdigest(), 16) % 100 / 100
    assert hashing.test_weight(guid) == expected and 0 <= expected < 1


@pytest.mark.parametrize(
    "cid, expected",
    [("aaaa", True), ("1111-1111-1", True), ("a", True), ("----", False), ("", False), ("ab", False),
     ("aaaA", False)],
)
def test_is_test_id(cid, expected):
    assert is_test_id(cid) is expected
