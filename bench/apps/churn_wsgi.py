"""The churn benchmark's web service: a WSGI app for gunicorn's sync workers, answering with the worker's pid."""

import os


def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
