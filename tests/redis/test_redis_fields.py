"""RedisStore field names: canonical JSON of the key tuple, computed without a server."""

import pandas as pd
from sqlalchemy import Column, Integer, String

from datapipe_redis.store import RedisStore


def test_field_encoding_is_canonical_whatever_the_key_dtypes():
    store = RedisStore(
        "redis://127.0.0.1:1/0", "t", [Column("a", Integer, primary_key=True), Column("b", String, primary_key=True)]
    )
    ints = pd.DataFrame({"a": [1, 20], "b": ["x", "ü"]})
    floats = pd.DataFrame({"a": [1.0, 20.0], "b": pd.Series(["x", "ü"], dtype=object)})
    assert store.encode_fields(ints) == store.encode_fields(floats) == ['[1,"x"]', '[20,"ü"]']
    assert store._client is None, "encoding must not connect"
