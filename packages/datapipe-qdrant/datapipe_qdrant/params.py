"""``CollectionParams``: how a Qdrant collection is created."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Union

from qdrant_client import models

VectorsSpec = Union[models.VectorParams, Mapping[str, Any], None]


def _vector_params(value: Any) -> models.VectorParams:
    if isinstance(value, models.VectorParams):
        return value
    if isinstance(value, Mapping):
        return models.VectorParams(**value)
    raise TypeError(f"expected qdrant_client.models.VectorParams or a dict of its fields, got {value!r}")


@dataclass
class CollectionParams:
    """Parameters for creating the collection, mirroring ``QdrantClient.create_collection``.

    The vector configuration is given either as ``vectors`` (a ``models.VectorParams``, a dict of
    its fields, or ``{vector_name: VectorParams}`` for a named vector) or with the ``size`` /
    ``distance`` shortcut::

        CollectionParams(size=384, distance="Cosine")
        CollectionParams(vectors=models.VectorParams(size=384, distance=models.Distance.DOT))
        CollectionParams(vectors={"embedding": models.VectorParams(size=384, distance="Cosine")})

    With neither, the collection holds payload only (no vectors). The other fields are passed to
    ``create_collection`` as they are; ``extra`` takes any further keyword arguments.
    Note: with ``Cosine`` distance Qdrant stores vectors normalised to unit length.
    """

    vectors: VectorsSpec = None
    size: Optional[int] = None
    distance: Union[str, models.Distance] = models.Distance.COSINE
    shard_number: Optional[int] = None
    replication_factor: Optional[int] = None
    write_consistency_factor: Optional[int] = None
    on_disk_payload: Optional[bool] = None
    hnsw_config: Optional[models.HnswConfigDiff] = None
    optimizers_config: Optional[models.OptimizersConfigDiff] = None
    wal_config: Optional[models.WalConfigDiff] = None
    quantization_config: Optional[Any] = None
    sparse_vectors_config: Optional[Mapping[str, models.SparseVectorParams]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def vectors_config(self) -> Union[models.VectorParams, Dict[str, models.VectorParams]]:
        """The ``vectors_config`` argument: one ``VectorParams``, named ones, or ``{}`` (no vectors)."""
        if self.vectors is not None and self.size is not None:
            raise ValueError("CollectionParams: give either `vectors` or `size`/`distance`, not both")
        if self.size is not None:
            return models.VectorParams(size=int(self.size), distance=models.Distance(self.distance))
        if self.vectors is None:
            return {}
        if isinstance(self.vectors, models.VectorParams):
            return self.vectors
        if isinstance(self.vectors, Mapping) and "size" in self.vectors:
            return _vector_params(self.vectors)
        if isinstance(self.vectors, Mapping):
            return {str(name): _vector_params(v) for name, v in self.vectors.items()}
        raise TypeError(f"CollectionParams.vectors: unsupported value {self.vectors!r}")

    def has_vectors(self) -> bool:
        return bool(self.vectors_config())

    def vector_size(self, vector_name: Optional[str]) -> Optional[int]:
        """Dimension of the (named) vector, or None when there is no vector."""
        cfg = self.vectors_config()
        if isinstance(cfg, models.VectorParams):
            return int(cfg.size)
        if vector_name is not None and vector_name in cfg:
            return int(cfg[vector_name].size)
        return None

    def create_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``QdrantClient.create_collection`` (without the collection name)."""
        kwargs: Dict[str, Any] = {"vectors_config": self.vectors_config()}
        optional = {
            "shard_number": self.shard_number,
            "replication_factor": self.replication_factor,
            "write_consistency_factor": self.write_consistency_factor,
            "on_disk_payload": self.on_disk_payload,
            "hnsw_config": self.hnsw_config,
            "optimizers_config": self.optimizers_config,
            "wal_config": self.wal_config,
            "quantization_config": self.quantization_config,
            "sparse_vectors_config": self.sparse_vectors_config,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        kwargs.update(self.extra)
        return kwargs
