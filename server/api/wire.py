"""Wire formats: msgpack bodies with msgpack-numpy arrays (bytes keys, as the SIE SDK expects) and JSON."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np

from server.api.errors import invalid_input

MSGPACK = "application/msgpack"
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")


def is_msgpack(content_type: str | None) -> bool:
    return any(t in (content_type or "").lower() for t in MSGPACK_TYPES)


def wants_json(accept: str | None) -> bool:
    """msgpack is the default; JSON only when asked for and msgpack is not."""
    accept = (accept or "").lower()
    return "application/json" in accept and "msgpack" not in accept


def _ndarray(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {b"nd": True, b"type": array.dtype.str, b"kind": b"", b"shape": list(array.shape),
                b"data": array.tobytes()}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot msgpack-encode {type(value).__name__}")


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=_ndarray)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot JSON-encode {type(value).__name__}")


def dump_json(obj: Any) -> bytes:
    return json.dumps(obj, default=_jsonable, separators=(",", ":"), allow_nan=False).encode()


def decode_body(raw: bytes, content_type: str | None) -> Any:
    if not raw:
        raise invalid_input("empty request body")
    if is_msgpack(content_type):
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for corrupt input
            raise invalid_input(f"malformed msgpack body ({type(exc).__name__})") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid_input(f"malformed JSON body: {exc}") from None
