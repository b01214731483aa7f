"""Accelerator and model catalogs (bundled YAML, user overrides)."""

from tokenfleet.catalog.loader import Catalog, load_catalog
from tokenfleet.catalog.schema import Accelerator, ModelSpec, Price, Source

__all__ = ["Accelerator", "Catalog", "ModelSpec", "Price", "Source", "load_catalog"]
