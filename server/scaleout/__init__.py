"""Scale-out on Ray Serve (optional extra `.[ray]`): encoder replicas with adapter-affinity routing
behind our unchanged FastAPI routes. Nothing outside this package imports ray."""
