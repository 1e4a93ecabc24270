"""Generate the committed JSON Schemas from the event models (``make schemas``).

The models' docstrings become the schemas' descriptions. They are written for Sphinx (reST
literals and roles); integrators read the schemas in any tool, so :func:`plain_text` turns them
into plain paragraphs first.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from common.events import SCHEMA_BASE, SCHEMA_MODELS

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")  # :func:`x`, :py:class:`~x.y`
_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(docstring: str) -> str:
    """reST markup out (literals and roles keep their text), each paragraph on one line."""
    text = _LITERAL.sub(r"\1", _ROLE.sub(r"\1", docstring))
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (plain_text(v) if k == "description" and isinstance(v, str) else _plain(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def render() -> dict[str, str]:
    """File name → JSON Schema text for every message we publish."""
    out = {}
    for name, model in SCHEMA_MODELS.items():
        schema = _plain(model.model_json_schema(mode="serialization"))
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{SCHEMA_BASE}{name}.json"
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
