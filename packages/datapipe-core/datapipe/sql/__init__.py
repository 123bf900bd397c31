"""SQL plumbing shared by the SQL table store and the metadata store.

``connection`` (``DBConn``, the shared transaction), ``rows`` (key filters, value conversion,
result frames, upsert statements), ``bulk`` (bulk upserts and key-list parameters) and
``schema`` (``MetaKey``, column copies, checks of declared against existing tables and of
values against column types). It sits below ``datapipe.store`` and ``datapipe.meta``.
"""
