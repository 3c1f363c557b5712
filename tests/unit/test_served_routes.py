"""The app's routes: the 404 for a route this server does not serve names its routes (every one it names
exists); the encode routes are plain Starlette routes in front of their documented FastAPI twins."""

from __future__ import annotations


def test_the_not_found_message_names_routes_the_app_has():
    """The 404 for an unserved route lists SERVED_ROUTES: each must be a route of the app's routers."""
    from server.api import admin, openai_routes, probes, sie_routes
    from server.api.errors import SERVED_ROUTES

    have = {(method, route.path.replace(":path", "")) for module in (probes, admin, openai_routes, sie_routes)
            for route in module.router.routes for method in route.methods}
    have |= {("GET", "/docs")}  # FastAPI's own page
    for methods, path in SERVED_ROUTES:
        for method in methods.split("|"):
            assert (method, path) in have, (method, path)


def test_the_encode_routes_skip_fastapis_dependency_solving_and_stay_documented():
    """SIE's encode and OpenAI's embeddings are served by plain Starlette routes in front of their FastAPI
    twins (a lone request's fixed cost); the OpenAPI document still lists them with their bodies."""
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    from server.api.app import HOT_PATHS, create_app
    from server.config import ServerSettings

    app = create_app({}, ServerSettings())
    front = app.router.routes[:len(HOT_PATHS)]
    assert all(type(route) is Route and not isinstance(route, APIRoute) for route in front)
    assert {route.path for route in front} == set(HOT_PATHS) and all(route.methods == {"POST"} for route in front)
    paths = app.openapi()["paths"]
    assert "requestBody" in paths["/v1/encode/{model}"]["post"] and "requestBody" in paths["/v1/embeddings"]["post"]
