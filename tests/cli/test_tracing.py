"""OpenTelemetry spans (run > step > batch) from OtelRunCallback, with the SDK's in-memory exporter."""

import pandas as pd
import pytest
from sqlalchemy import Column, Integer, String

from datapipe.compute import Catalog, Pipeline, Table, build_compute, run_steps
from datapipe.datatable import DataStore
from datapipe.run_config import RunConfig
from datapipe.step.batch_transform import BatchTransform
from datapipe.store.database import DBConn, TableStoreDB

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from datapipe.tracing import OtelRunCallback, otel_available  # noqa: E402


def maybe_fail(df: pd.DataFrame) -> pd.DataFrame:
    if (df["a"] == "bad").any():
        raise ValueError("bad row")
    return df


def test_spans_for_run_steps_and_batches(tmp_path):
    assert otel_available()
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    dbconn = DBConn(f"sqlite:///{tmp_path}/t.sqlite")
    ds = DataStore(dbconn, create_meta_table=True)
    schema = [Column("id", Integer, primary_key=True), Column("a", String)]
    catalog = Catalog({n: Table(TableStoreDB(dbconn, n, schema, create_table=True)) for n in ("inp", "out")})
    steps = build_compute(
        ds, catalog, Pipeline([BatchTransform(maybe_fail, inputs=["inp"], outputs=["out"], chunk_size=2, name="t")])
    )
    ds.get_table("inp").store_chunk(pd.DataFrame({"id": range(5), "a": ["x", "x", "bad", "x", "x"]}))
    run_steps(ds, steps, RunConfig(callback=OtelRunCallback(tracer=provider.get_tracer("test"))))

    finished = exporter.get_finished_spans()
    spans = {name: [s for s in finished if s.name == name] for name in {s.name for s in finished}}
    (run,) = spans["datapipe.run"]
    (step,) = spans["datapipe.step"]
    batches = spans["datapipe.batch"]
    assert step.parent.span_id == run.context.span_id
    assert [b.attributes["datapipe.batch"] for b in batches] == [1, 2, 3]
    assert all(b.parent.span_id == step.context.span_id for b in batches)
    assert [b.attributes["datapipe.rows"] for b in batches] == [2, 2, 1]
    assert [e.name for e in step.events] == ["exception"]  # the failed batch
    assert step.attributes["datapipe.step"] == "t" and step.attributes["datapipe.batches.total"] == 3
    dbconn.con.dispose()
