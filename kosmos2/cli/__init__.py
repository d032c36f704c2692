"""The command line: :mod:`.main` (the ``kosmos2`` command and its subcommands), :mod:`.common` (what they
share), :mod:`.task` (one task on one image), :mod:`.label` (a folder to COCO, YOLO or JSONL) and
:mod:`.selfcheck` (the real checkpoint against recorded outputs)."""
