"""From plan to running fleet: engine launch arguments, cluster manifests and the
gateway's ``backends.yaml`` for every pool of a :class:`tokenfleet.plan.schema.Plan`.

Stands on ``plan/`` (and the catalog for model repositories); returns file contents as
typed values and never writes or prints: ``tokenfleet export`` (``cli/export.py``) does.
"""
