"""WSGI entry point: ``gunicorn -c python:taar_web.gunicorn_conf taar_web.wsgi:app``.

The only module that builds an app at import time (settings from the environment).
"""

from taar_web.app import create_app

app = create_app()
