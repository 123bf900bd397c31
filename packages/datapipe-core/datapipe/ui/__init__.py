"""A web view of a pipeline: ``datapipe ui`` (optional extra ``datapipe-core[ui]``).

Modules, from data to HTTP:

``views``    what the pages show, as JSON-ready dicts (graph, step status and errors, table pages);
             no HTTP, every filter a bound parameter, every count from indexed metadata.
``runs``     runs started from the page: one at a time in a background thread; events for
             server-sent-event streams; refuses a step another process is running (its lock).
``metrics``  ``/metrics`` in the Prometheus text format.
``server``   the Starlette app: routes, errors as JSON, token / loopback / same-origin guard.
``command``  the ``datapipe ui`` click command, registered through the ``datapipe_cli`` hook.
``static/``  the page: plain HTML, CSS and JavaScript, no build step and no external resource.
"""
