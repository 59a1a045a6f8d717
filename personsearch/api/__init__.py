"""The HTTP API (FastAPI): cameras, the watchlist, alerts (with a live stream), search by photo and webhooks.

``create_app`` builds it; ``server.ApiServer`` serves it as the ``api`` worker of `personsearch up`. One module per
resource (cameras, watchlist, alerts, search, webhooks, operations); ``context`` holds what they share and the
authentication, ``errors`` how failures become HTTP problems, ``models`` the bodies of the OpenAPI contract.
"""

from personsearch.api.app import create_app

__all__ = ["create_app"]
