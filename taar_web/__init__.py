"""TAAR web service: the Flask app answering AMO (SPEC §4, §6).

Build an app with :func:`taar_web.app.create_app` (settings from the environment
unless given); ``taar_web.wsgi:app`` is the production entry point. Modules:
``settings`` (§6.1), ``registry`` + ``refresher`` (model load, refresh and hot
swap, §6.3), ``views`` (one blueprint per route family, §4.2-4.9),
``validation`` (input rules and JSON errors, §4.3), ``health`` (heartbeat
checks, §4.8), ``logging`` (§6.4), ``metrics`` (§6.5), ``sentry`` (§6.6),
``gunicorn_conf`` (§6.2) and ``openapi.json`` (§4.9).

Run it locally against ``./var/models`` and ``sqlite:///./var/profiles.sqlite3``
(the defaults; ``make serve`` does the same)::

    TAAR_MODEL_STORE=./var/models TAAR_PROFILE_STORE=sqlite:///./var/profiles.sqlite3 \\
        PORT=8000 WORKERS=2 THREADS=4 \\
        .venv/bin/gunicorn -c python:taar_web.gunicorn_conf taar_web.wsgi:app

then ``curl localhost:8000/__heartbeat__``. gunicorn binds ``0.0.0.0:$PORT`` as in
production; add ``-b 127.0.0.1:8000`` to keep it on loopback.
"""
