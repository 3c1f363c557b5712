"""Wire format: msgpack-numpy maps with bytes keys decode with the real SIE SDK's own decoder."""

from __future__ import annotations

import numpy as np
import pytest
from sie_sdk._msgpack import unpackb as sdk_unpackb

from server.api.errors import ApiError
from server.api.wire import decode_body, dump_json, pack, wants_json


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint8])
def test_ndarray_roundtrip_through_sdk_decoder(dtype):
    values = np.arange(8).astype(dtype)
    packed = pack({"items": [{"dense": {"values": values}}]})
    decoded = sdk_unpackb(packed, numeric_arrays=True)["items"][0]["dense"]["values"]
    assert decoded.dtype == values.dtype
    np.testing.assert_array_equal(decoded, values)


def test_ndarray_keys_are_bytes():
    import msgpack

    raw = msgpack.unpackb(pack(np.zeros(2, dtype=np.float32)), raw=False)
    assert set(raw) == {b"nd", b"type", b"kind", b"shape", b"data"}
    assert raw[b"type"] == "<f4"


def test_json_lists():
    assert dump_json({"v": np.array([1.5, 2.0], dtype=np.float32)}) == b'{"v":[1.5,2.0]}'


def test_accept_negotiation():
    assert not wants_json(None)
    assert wants_json("application/json")
    assert not wants_json("application/json, application/msgpack")


@pytest.mark.parametrize("raw, content_type", [
    (b"\xc1", "application/msgpack"),
    (b"{not json", "application/json"),
    (b"", "application/json"),
    (b"\xa2\xff\xfe", "application/x-msgpack"),  # str with invalid UTF-8
])
def test_malformed_bodies_are_400(raw, content_type):
    with pytest.raises(ApiError) as info:
        decode_body(raw, content_type)
    assert info.value.status == 400 and info.value.code == "INVALID_INPUT"
