"""``python -m kosmos2 label``: label a folder of images (COCO, YOLO or JSONL), resumable, on one machine
or on a Ray cluster: :mod:`.cli` (the command), :mod:`.work` (labelling with the model), :mod:`.ray_engine`,
:mod:`.outputs`, and :mod:`.records`, the formats and the journal without a model (no torch)."""


def main(argv: list[str] | None = None) -> int:
    """The ``label`` command (:func:`.cli.main`), imported when called so that :mod:`.records` stays light."""
    from .cli import main as run

    return run(argv)
