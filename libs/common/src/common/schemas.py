"""Generate the committed JSON Schemas from the event models (``make schemas``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common.events import SCHEMA_MODELS


def render() -> dict[str, str]:
    """File name → JSON Schema text for every message we publish."""
    out = {}
    for name, model in SCHEMA_MODELS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://scoreboard.dev/schemas/{name}.json"
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main() -> None:
    """Write the schemas into the directory given (default ``schemas/``)."""
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (target / name).write_text(text)
        print(f"wrote {target / name}")


if __name__ == "__main__":
    main()
