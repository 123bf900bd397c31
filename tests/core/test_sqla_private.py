"""The private SQLAlchemy APIs Datapipe relies on (``datapipe.sql.sqla_private``) still exist and behave.

If one of these fails after an SQLAlchemy upgrade, fix ``datapipe/sql/sqla_private.py`` before lifting
the version cap in ``packages/datapipe-core/pyproject.toml``.
"""

import sqlalchemy
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.sql.visitors import InternalTraversal

from datapipe.sql import sqla_private
from datapipe.sql.bulk import key_in
from datapipe.sql.rows import fetch_rows
from datapipe.sql.schema import MetaKey, copy_column


def test_result_processors_are_visible(dbconn):
    table = Table("t_private", MetaData(), Column("id", Integer, primary_key=True), Column("s", String))
    with dbconn.con.begin() as con:
        table.create(con)
        con.execute(table.insert(), [{"id": 1, "s": "a"}])
        result = con.execute(select(table.c.id, table.c.s))
        assert sqla_private.has_result_processors(result) is not None  # None: the private attribute is gone
        result.close()
        assert [tuple(r) for r in fetch_rows(con, select(table.c.id, table.c.s))] == [(1, "a")]


def test_bind_processor_and_column_copy(dbconn):
    assert hasattr(String(), "_cached_bind_processor")
    processor = sqla_private.bind_processor(String(), dbconn.con.dialect)
    assert processor is None or processor("x") == "x"
    col = Column("owner", Integer, MetaKey())
    copied = copy_column(col)
    assert copied is not col and copied.table is None and copied.meta_key is col.meta_key  # type: ignore[attr-defined]


def test_custom_constructs_keep_their_cache_keys():
    assert InternalTraversal.dp_clauseelement and InternalTraversal.dp_clauseelement_list
    table = Table("t_key_in", MetaData(), Column("id", Integer, primary_key=True))
    a, b = key_in(table.c.id, [1, 2]), key_in(table.c.id, [3, 4, 5])
    assert a._generate_cache_key() == b._generate_cache_key()  # the statement does not grow with the keys


def test_sqlalchemy_is_within_the_tested_range():
    major, minor = (int(x) for x in sqlalchemy.__version__.split(".")[:2])
    assert (2, 0) <= (major, minor) < (2, 2), sqlalchemy.__version__


def test_spare_connections_of_a_queue_pool(tmp_path):
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool, QueuePool

    engine = create_engine(f"sqlite:///{tmp_path}/p.db", poolclass=QueuePool, pool_size=2, max_overflow=1)
    try:
        assert sqla_private.spare_connections(engine.pool) == 3  # None: the private attribute is gone
        with engine.connect(), engine.connect():
            assert sqla_private.spare_connections(engine.pool) == 1
    finally:
        engine.dispose()
    unlimited = create_engine(f"sqlite:///{tmp_path}/p.db", poolclass=NullPool)
    assert sqla_private.spare_connections(unlimited.pool) is None
