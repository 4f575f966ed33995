"""Identifier hashing shared by the ETL and the service (SPEC §2.9).

* Client ids: lowercase hex SHA-256 of the UTF-8 telemetry client id. It is the
  Bigtable row key, the payload ``client_id`` and the id AMO puts in the URL.
* Add-on item ids: Java's ``String.hashCode`` over UTF-16 code units, masked to
  23 bits, as the historical Scala ALS job published them.
* Test ids: ids made of one repeated character (dashes ignored), which QA uses
  to get whitelist-based answers without a profile.
* Client sampling buckets (SPEC §8.5).
"""

import hashlib

ITEM_ID_MASK = 0x7FFFFF
#: Client sampling keeps a client when ``xxhash64 mod SAMPLE_BUCKETS < rate * SAMPLE_BUCKETS`` (SPEC §8.5);
#: the Spark jobs and the profile extract share it.
SAMPLE_BUCKETS = 1_000_000


def hash_client_id(client_id: str) -> str:
    """Return the lowercase hex SHA-256 of ``client_id`` encoded as UTF-8."""
    return hashlib.sha256(client_id.encode("utf-8")).hexdigest()


#: ASCII strings up to this length take the unmasked loop of :func:`java_string_hashcode` (the
#: integer grows 5 bits per character; longer strings keep the masked loop's small integers).
UNMASKED_MAX_CHARS = 256


def java_string_hashcode(s: str) -> int:
    """Return Java's ``String.hashCode()`` of ``s`` as a signed 32-bit int.

    Java hashes UTF-16 code units, so characters outside the BMP contribute
    their two surrogates. An ASCII string (every GUID in practice; ``isascii`` is
    a flag check) has one code unit per character, equal to its byte, and as
    reducing modulo 2**32 once at the end gives what reducing at every step gives,
    its loop is ``h * 31 + c`` over the bytes, without the per-step mask: about
    half the cost of :func:`reference_java_string_hashcode` (the collaborative
    recommender hashes every installed GUID outside its mapping, per request).
    """
    if not (s.isascii() and len(s) <= UNMASKED_MAX_CHARS):
        return reference_java_string_hashcode(s)
    h = 0
    for c in s.encode("ascii"):
        h = h * 31 + c
    h &= 0xFFFFFFFF
    return h - 0x100000000 if h & 0x80000000 else h


def reference_java_string_hashcode(s: str) -> int:
    """:func:`java_string_hashcode` for any string: the masked loop over UTF-16 code units."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - 0x100000000 if h & 0x80000000 else h


def item_id(guid: str) -> int:
    """Return the 23-bit non-negative item id of an add-on GUID."""
    return java_string_hashcode(guid) & ITEM_ID_MASK


def test_weight(guid: str) -> float:
    """Return the pseudo weight in [0, 0.99] that test ids give to ``guid``."""
    return (int(hashlib.sha256(guid.encode("utf-8")).hexdigest(), 16) % 100) / 100


def is_test_id(client_id: str) -> bool:
    """True when ``client_id`` minus dashes is non-empty and one repeated character."""
    stripped = client_id.replace("-", "")
    return bool(stripped) and stripped == stripped[0] * len(stripped)
