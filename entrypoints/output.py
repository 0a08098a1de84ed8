"""Writing a command's result document where the user asked (`--json FILE`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write `doc` as indented JSON, creating the folder first (a new `--json` path is normal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
