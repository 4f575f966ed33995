"""gunicorn configuration for ``bench.serve``'s control load: production's, plus an idle wait per profile read.

``-c python:bench.serve_conf`` runs ``taar_web.gunicorn_conf`` unchanged and, when
``BENCH_PROFILE_WAIT_MS`` is set above 0, makes each worker's profile store sleep that
long before every read. The sleep costs no CPU of its own; what it adds to a request's
CPU is what blocking on any remote store costs the worker on this machine (the thread
parks, others take the GIL, it comes back to colder caches), as distinct from the
client library's own work. Benchmarks only: nothing in the service imports this.
"""

import os
import time

from taar_web import gunicorn_conf as _production
from taar_web.gunicorn_conf import *  # noqa: F403 - every production setting and hook

_WAIT_S = float(os.environ.get("BENCH_PROFILE_WAIT_MS", "0")) / 1000


def post_fork(server, worker):
    _production.post_fork(server, worker)
    if _WAIT_S > 0:
        from taar_web import services

        store = worker.app.wsgi().extensions[services.EXTENSION].profile_fetcher.store
        read = store.get

        def waiting_get(row_key, timeout_s):
            time.sleep(_WAIT_S)
            return read(row_key, timeout_s)

        store.get = waiting_get
