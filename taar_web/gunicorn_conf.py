"""gunicorn configuration (SPEC §6.2), loaded with ``-c python:taar_web.gunicorn_conf``.

``preload_app`` loads the models once in the master so workers share them
copy-on-write; ``gthread`` workers serve ``THREADS`` requests each; the access
log is off because the app writes its own ``request.summary`` line. ``pre_fork``
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
worker_class = "gthread"
preload_app = True
accesslog = None
errorlog = "-"
# Load balancers keep connections open between requests.
keepalive = 5


def pre_fork(server, worker):
    # The master holds the loaded models for the workers' lifetime: moving them out of
    # the cyclic GC's reach keeps the workers' collections from scanning them (no long
    # pauses) and from writing to their pages (workers keep sharing them after fork).
    gc.freeze()


def post_fork(server, worker):
    from taar_web.app import worker_started

    worker_started(worker.app.wsgi())
