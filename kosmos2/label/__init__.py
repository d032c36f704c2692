"""``python -m kosmos2 label``: label a folder of images (COCO, YOLO or JSONL), resumable, on one machine
or on a Ray cluster. The formats and the journal, without a model, are :mod:`kosmos2.labels`."""

from .cli import main

__all__ = ["main"]
