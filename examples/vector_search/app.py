"""Keep a Qdrant collection of document embeddings in sync with a JSON-lines file.

Needs: pip install -e packages/datapipe-core -e packages/datapipe-qdrant

    python app.py "how do I make coffee"

Each run embeds only new or edited documents and removes deleted ones from the collection,
then prints the documents nearest to the query. The "embedding" is a hashed bag of words so the
example runs offline; swap ``embed`` for a real model.
"""

import re
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import JSON, Column, String

from datapipe.compute import Catalog, DatapipeApp, Pipeline, Table, run_steps
from datapipe.datatable import DataStore
from datapipe.step.batch_transform import BatchTransform
from datapipe.step.update_external_table import UpdateExternalTable
from datapipe.store.database import DBConn
from datapipe.store.pandas import TableStoreJsonLine
from datapipe_qdrant import CollectionParams, QdrantStore

HERE = Path(__file__).parent
DIM = 64

dbconn = DBConn(f"sqlite:///{HERE / 'vector_search.db'}")
ds = DataStore(dbconn, create_meta_table=True)
vectors = QdrantStore(
    name="docs",
    url=str(HERE / "qdrant_data"),  # embedded Qdrant on disk; "http://host:6333" for a server
    schema=[Column("doc_id", String, primary_key=True), Column("text", String), Column("embedding", JSON)],
    pk_field="doc_id",
    embedding_field="embedding",
    collection_params=CollectionParams(size=DIM, distance="Cosine"),
)
catalog = Catalog(
    {
        "docs": Table(
            TableStoreJsonLine(
                HERE / "data" / "docs.jsonl", primary_schema=[Column("doc_id", String, primary_key=True)]
            )
        ),
        "doc_vectors": Table(vectors),
    }
)


def embed_text(text: str) -> np.ndarray:
    vec = np.zeros(DIM)
    for word in re.findall(r"[a-z]+", text.lower()):
        vec[zlib.crc32(word.encode()) % DIM] += 1.0
    return vec / (np.linalg.norm(vec) or 1.0)


def embed(docs: pd.DataFrame) -> pd.DataFrame:
    print(f"embedding {len(docs)} document(s)")
    return docs.assign(embedding=[embed_text(t).tolist() for t in docs["text"]])[["doc_id", "text", "embedding"]]


pipeline = Pipeline(
    [UpdateExternalTable(output="docs"), BatchTransform(embed, inputs=["docs"], outputs=["doc_vectors"])]
)
app = DatapipeApp(ds, catalog, pipeline)


if __name__ == "__main__":
    run_steps(ds, app.steps)
    query = sys.argv[1] if len(sys.argv) > 1 else "coffee beans"
    for hit in vectors.search(embed_text(query).tolist(), limit=3).itertuples():
        print(f"{hit.doc_id}: {hit.text}")
