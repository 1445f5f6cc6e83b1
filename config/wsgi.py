import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
application = get_wsgi_application()


def _warm_up() -> None:
    """Pay each web worker's one-off start-up costs before its first request does.

    Measured on the rollback endpoint: the first rollback a fresh gunicorn worker served
    took 20-70 ms longer than the next ones -- importing the runtime backend (~18 ms, before
    the route flips) and finalising the Celery app with its result backend (~45 ms, before
    the 202) -- and that first rollback is the one on-call presses after a deploy. Imports
    and Celery's own set-up only: no connection is opened here (gunicorn loads this module
    in each worker after the fork; without --preload nothing is shared).
    """
    import importlib

    from django.conf import settings

    from config.celery_app import app as celery_app
    from deployments.backends import RUNTIME_BACKENDS

    if settings.MODELYARD_RUNTIME_BACKEND in RUNTIME_BACKENDS:  # a wrong one is reported at use
        importlib.import_module(f"deployments.runtime.{settings.MODELYARD_RUNTIME_BACKEND}")
    celery_app.finalize(auto=True)
    celery_app.backend  # noqa: B018 - loads the result backend class (entry points scan)


_warm_up()
