"""The reference implementation (``transformers``), built on our tiny checkpoints: test oracle only."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers


def reference_processor(folder: Path, padding_side: str = "left"):
    """The reference ``Kosmos2Processor`` for a checkpoint folder.

    As SPEC.md says: the tokenizer is built from the stored ``tokenizer.json`` pipeline
    (``XLMRobertaTokenizer.from_pretrained`` would rebuild its own), and the pillow CLIP image
    processor gets an explicit ``{"height", "width"}`` size (its ``use_square_size`` path always
    uses 224). The reference processor adds the tags and patch tokens itself when missing.
    """
    from transformers import CLIPImageProcessorPil, Kosmos2Processor, XLMRobertaTokenizer

    tokenizer = XLMRobertaTokenizer(tokenizer_object=tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json")))
    tokenizer.padding_side = padding_side
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer.model_max_length = tokenizer_config["model_max_length"]
    size = json.loads((folder / "config.json").read_text())["vision_config"]["image_size"]
    image_processor = CLIPImageProcessorPil(
        size={"height": size, "width": size}, crop_size={"height": size, "width": size}
    )
    return Kosmos2Processor(image_processor, tokenizer)
