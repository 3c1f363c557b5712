"""Wire formats: msgpack bodies with msgpack-numpy arrays (bytes keys, as the SIE SDK expects) and JSON.
A decoded body is refused (400) when it nests deeper than MAX_DEPTH or holds a string that is not valid
Unicode (a lone surrogate from a JSON escape), so neither can reach a parser or the tokenizer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import numpy as np

from server.api.errors import ApiError, invalid_input

INLINE_BODY_BYTES = 1 << 20  # larger bodies are decoded in a worker thread, off the event loop
MAX_DEPTH = 32  # our bodies nest 5 levels; anything far deeper is an attack or a bug
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


async def decode(raw: bytes, content_type: str | None) -> Any:
    """`decode_body`, in a worker thread when the body is large (a 10 MB body must not stall small ones)."""
    if len(raw) <= INLINE_BODY_BYTES:
        return decode_body(raw, content_type)
    return await asyncio.to_thread(decode_body, raw, content_type)


def is_json(content_type: str | None) -> bool:
    """JSON, or no Content-Type at all (taken as JSON)."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind in ("", "application/json") or kind.endswith("+json")


def decode_body(raw: bytes, content_type: str | None) -> Any:
    if not is_msgpack(content_type) and not is_json(content_type):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", f"a {content_type.split(';', 1)[0]} body is not read here: "
                       "send application/json or application/msgpack (curl: -H 'Content-Type: application/json')")
    if not raw:
        raise invalid_input("empty request body")
    if is_msgpack(content_type):
        try:
            body = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for corrupt input
            raise invalid_input(f"malformed msgpack body ({type(exc).__name__})") from None
    else:
        try:
            body = json.loads(raw)
        except RecursionError:
            raise invalid_input(f"JSON body nests deeper than {MAX_DEPTH} levels") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise invalid_input(f"malformed JSON body: {exc}") from None
    check_structure(body)
    return body


def check_structure(value: Any) -> None:
    """Depth and Unicode of every key and value, iteratively (a recursive walk could itself overflow)."""
    stack = [(value, 1, "body")]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid_input(f"request body nests deeper than {MAX_DEPTH} levels")
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str):
                    _check_text(key, where)
                stack.append((item, depth + 1, f"{where}.{key}" if isinstance(key, str) else where))
        elif isinstance(node, list):
            stack.extend((item, depth + 1, f"{where}.{i}") for i, item in enumerate(node))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid_input(f"{where}: invalid Unicode at character {exc.start} (a lone surrogate such as "
                            f"\\ud800 is not text)") from None
