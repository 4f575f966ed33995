"""gunicorn configuration (SPEC §6.2), loaded with ``-c python:taar_web.gunicorn_conf``.

``preload_app`` loads the models once in the master so workers share them
copy-on-write; gthread workers (:class:`taar_web.gunicorn_worker.TaarThreadWorker`,
which reads request headers in its event loop so stalled clients hold no thread)
serve ``THREADS`` requests each; the access log is off because the app writes its
own ``request.summary`` line. ``keepalive`` (``TAAR_KEEPALIVE_SECONDS``, default
620 s) outlives the Google load balancer's 600 s idle timeout, so the balancer,
not gunicorn, closes idle connections (no race on a reused connection). ``pre_fork``
freezes the master's objects (the models) out of the cyclic GC; ``post_fork``
gives each worker its own store clients and starts its model refresher (threads
do not survive ``fork``).
"""

import gc

from taar_web.settings import Settings

_settings = Settings.from_env()

bind = f"0.0.0.0:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = "taar_web.gunicorn_worker.TaarThreadWorker"
preload_app = True
accesslog = None
errorlog = "-"
keepalive = _settings.keepalive_seconds
# Every connection may be kept alive: room for WORKERS x THREADS busy ones plus the idle ones.
worker_connections = 1000


def pre_fork(server, worker):
    # The master holds the loaded models for the workers' lifetime: moving them out of
    # the cyclic GC's reach keeps the workers' collections from scanning them (no long
    # pauses) and from writing to their pages (workers keep sharing them after fork).
    gc.freeze()


def post_fork(server, worker):
    from taar_web.app import worker_started

    worker_started(worker.app.wsgi())
