"""0.15 path of the store conformance kit; it lives in ``datapipe.testing.kit``."""

from datapipe.testing.kit import AbstractBaseStoreTests

__all__ = ["AbstractBaseStoreTests"]
