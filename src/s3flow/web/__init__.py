"""``s3flow web``: the HTTP API of upload jobs and its pages (FastAPI on uvicorn).

Modules, one job each: :mod:`.app` (the application and its lifespan),
:mod:`.api` (the ``/api`` routes), :mod:`.events` (the event stream),
:mod:`.runtime` (clients, store, hub and progress consumer), :mod:`.hub`
(live fan-out of job events), :mod:`.sse` (the event-stream format and
response), :mod:`.auth` (tokens and the loopback rule), :mod:`.errors`
(JSON errors), :mod:`.render` (JSON bodies), :mod:`.pages` (the browser pages; their
HTML in ``html/``, scripts and styles in ``static/``), :mod:`.form`
(``POST /upload``, one file through the server) and :mod:`.server`
(running it). Nothing is imported here, so ``s3flow.web.auth`` stays cheap for
``s3flow web hash-token``.
"""
