"""What the labelling tests share: the detect flags, a folder of images to label (good and bad ones), and
readers of the journal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from images import png_bomb
from launch import ROOT
from PIL import Image

PHRASES = ("a dog", "a cat")
DETECT = ["--task", "detect", "--phrases", PHRASES[0], "--phrases", PHRASES[1], "--threshold", "0",
          "--max-instances", "3"]


def make_folder(root: Path, count: int = 11) -> Path:
    """``count`` small noise images (every supported extension), a 16-bit PNG, one image in a sub-folder, a
    file that is not an image, a truncated JPEG, a decompression bomb and a text file (not an image name)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    extensions = ["jpg", "png", "webp", "bmp", "gif", "tiff", "jpeg", "tif", "PNG", "JPG"]
    for i in range(count):
        width, height = 40 + 7 * (i % 11), 70 - 3 * (i % 13)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
            root / f"img{i:02d}.{extensions[i % len(extensions)]}")
    Image.fromarray(rng.integers(0, 65536, (30, 50), dtype=np.uint16)).save(root / "deep.png")
    assert Image.open(root / "deep.png").mode.startswith("I;16")
    (root / "sub").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / "sub" / "inner.png")
    (root / "holiday.png").write_text("these are words, not pixels\n" * 20)
    cat = (ROOT / "assets" / "cat.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(cat[: len(cat) // 2])
    png_bomb(root / "bomb.png", 20_000, 2_500)  # 50 megapixels (limit 40), a few kB
    (root / "notes.txt").write_text("not an image name: never looked at\n")
    return root


def journal_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return sorted(({k: v for k, v in r.items() if k != "timing"} for r in records), key=lambda r: r["file"])


def split_scores(entities: list[dict]) -> tuple[list[dict], list[float]]:
    """The entities with each score replaced by whether there is one, and the scores in order: to compare
    runs whose rows were batched differently (scores within a tolerance, the rest exactly)."""
    kept, scores = [], []
    for e in entities:
        scores += [v for v in [*e["scores"], e["score"]] if v is not None]
        kept.append({**e, "scores": [v is not None for v in e["scores"]], "score": e["score"] is not None})
    return kept, scores
