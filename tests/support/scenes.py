"""Plain-colour scenes with one box each, as referring-expression JSON lines: training data whose targets a
tiny model can learn in seconds (shared by the training tests)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

SCENES = [("red", [10, 10, 40, 40]), ("blue", [50, 20, 90, 45]), ("green", [5, 25, 30, 48]), ("yellow", [60, 5, 95, 30])]


def write_scenes(folder: Path, count: int = len(SCENES)) -> Path:
    """Write the first ``count`` scenes' 100x50 images and ``refexp.jsonl`` to ``folder``; returns the file."""
    lines = []
    for colour, box in SCENES[:count]:
        Image.new("RGB", (100, 50), colour).save(folder / f"{colour}.png")
        lines.append(json.dumps({"image": f"{colour}.png", "expression": f"the {colour} thing", "box": box}))
    (folder / "refexp.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "refexp.jsonl"
