"""Write the published JSON Schemas of the project's file formats into schemas/.

    python scripts/write_schemas.py          # rewrite
    python scripts/write_schemas.py --check  # exit 1 when a file is out of date

tests/test_schemas.py runs the check, so a change to a model without its schema fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "schemas"


def schemas() -> dict[str, dict]:
    from tokenfleet.plan.schema import Plan

    plan = Plan.model_json_schema()
    plan["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    plan["$id"] = "https://github.com/tokenfleet/tokenfleet/schemas/plan.schema.json"
    plan["description"] = ("plan.json, written by `tokenfleet plan` and read by `simulate`, "
                           "`serve`, `emulate` and `export`. Generated from "
                           "tokenfleet.plan.schema.Plan by scripts/write_schemas.py.")
    return {"plan.schema.json": plan}


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for name, schema in schemas().items():
        path = OUT / name
        text = render(schema)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python scripts/write_schemas.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
