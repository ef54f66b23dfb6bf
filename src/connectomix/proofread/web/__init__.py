"""The proofreading web app (FastAPI): JSON API, the page, precomputed volumes and the Neuroglancer client.

``create_app(db, workspace)`` builds it; ``cx serve`` runs it with uvicorn.
"""

from connectomix.proofread.web.app import WebContext, create_app

__all__ = ["WebContext", "create_app"]
