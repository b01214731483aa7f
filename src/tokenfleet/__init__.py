"""tokenfleet: plan, simulate and route LLM inference across mixed accelerators."""

__version__ = "0.1.0"
