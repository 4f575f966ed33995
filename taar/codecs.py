"""Artifact encoding (SPEC §2.3): compact sorted JSON, optionally bz2-compressed.

Writers always produce ``bz2(json)``; readers accept plain or compressed JSON and
decide by the object name, so pre-existing ``.json`` objects keep loading.
"""

import bz2
import json

BZ2_LEVEL = 9


class DecodeError(ValueError):
    """Stored bytes could not be decompressed or parsed as JSON."""


def encode_json(obj) -> bytes:
    """Return ``obj`` as UTF-8 JSON with compact separators and sorted keys.

    Raises ``ValueError`` for NaN or infinite floats (``allow_nan=False``).
    """
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False, ensure_ascii=False).encode(
        "utf-8"
    )


def encode(obj) -> bytes:
    """Return ``obj`` as bz2-compressed (level 9) compact JSON."""
    return bz2.compress(encode_json(obj), compresslevel=BZ2_LEVEL)


def decode(data: bytes, name: str):
    """Decode stored bytes; decompress first when ``name`` ends with ``.bz2``."""
    try:
        if name.endswith(".bz2"):
            data = bz2.decompress(data)
        return json.loads(data.decode("utf-8"))
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"cannot decode {name}: {exc}") from exc
