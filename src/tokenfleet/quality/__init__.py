"""Precision validation: what FP8, FP4 and INT formats cost in quality on a real model.

* :mod:`~tokenfleet.quality.formats` — number-format definitions (no PyTorch);
* :mod:`~tokenfleet.quality.quantize` — quantize-dequantize of tensors (PyTorch);
* :mod:`~tokenfleet.quality.fakequant` — apply a format to a model's weights, activations
  and KV cache (PyTorch);
* :mod:`~tokenfleet.quality.validate` — measure quality against FP32 (PyTorch,
  transformers);
* :mod:`~tokenfleet.quality.assessment` — the JSON report and the rules the planner checks
  (no PyTorch: the planner imports it).

Importing this package imports no PyTorch; install ``tokenfleet[quality]`` for the rest.
"""
