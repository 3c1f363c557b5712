"""HTTP edge: FastAPI app, wire formats (msgpack / JSON) and request schemas."""
