import bz2
import json

import pytest

from taar.codecs import DecodeError, decode, encode, encode_json

pytestmark = pytest.mark.unit


def test_encode_is_compact_sorted_bz2_json():
    data = encode({"b": 1, "a": [1.5, "é"]})
    assert bz2.decompress(data) == '{"a":[1.5,"é"],"b":1}'.encode()


def test_decode_reads_compressed_and_plain_by_name():
    obj = {"x": [1, 2]}
    assert decode(encode(obj), "m.json.bz2") == obj
    assert decode(json.dumps(obj, indent=2).encode(), "m.json") == obj


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_encode_refuses_non_finite(bad):
    with pytest.raises(ValueError):
        encode_json({"w": bad})


def test_decode_errors_name_the_object():
    with pytest.raises(DecodeError, match="model.json.bz2"):
        decode(b"not bz2", "model.json.bz2")
    with pytest.raises(DecodeError, match="model.json"):
        decode(b"{broken", "model.json")
