"""Fine-tuning: :mod:`.examples` (training examples from label journals, COCO, referring expressions and
grounded text; pure), :mod:`.batches` (examples to model inputs and labels), :mod:`.metrics` (box hits;
pure) and :mod:`.loop` (the training loop, its checkpoints and several processes). The LoRA layer is in
:mod:`kosmos2.lora`, beside the model that loads adapters."""

from .batches import LOSS_ON, Encoder, ExampleError, Row, collate
from .examples import FORMATS, DataError, Example, Problem, read_examples
from .loop import Trainer, TrainError, TrainResult, TrainSettings, World, check_output, run_params, save_model
from .metrics import box_hits

__all__ = [
    "DataError",
    "Encoder",
    "Example",
    "ExampleError",
    "FORMATS",
    "LOSS_ON",
    "Problem",
    "Row",
    "TrainError",
    "TrainResult",
    "TrainSettings",
    "Trainer",
    "World",
    "box_hits",
    "check_output",
    "collate",
    "read_examples",
    "run_params",
    "save_model",
]
