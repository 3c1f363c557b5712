"""The 404 for a route this server does not serve names its routes: every one it names exists."""

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
