"""The published JSON Schema of plan.json (schemas/plan.schema.json) is the Plan model's,
and a real plan validates against it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

from tokenfleet.plan.schema import Plan

ROOT = Path(__file__).resolve().parents[2]


def test_published_schema_is_up_to_date() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts/write_schemas.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_plan_validates_and_a_broken_one_does_not(vendor_plan: Plan) -> None:
    schema = json.loads((ROOT / "schemas/plan.schema.json").read_text())
    doc = json.loads(vendor_plan.model_dump_json())
    jsonschema.validate(doc, schema)
    doc["units"][0]["replicas"] = "three"
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as e:
        assert "replicas" in str(e.path) or "three" in e.message
    else:
        raise AssertionError("a string replica count passed the schema")
