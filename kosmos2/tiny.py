"""A built-in tiny KOSMOS-2 checkpoint in the hub's file layout, with random weights.

Tests, benchmarks and the app's offline mode use it. ``python -m kosmos2.tiny DIR`` writes one.
Everything is deterministic for a given seed; nothing here is ever committed.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from .config import Kosmos2Config, Kosmos2TextConfig, Kosmos2VisionConfig
from .grounding import NUM_PATCH_INDEX_TOKENS, TAG_TOKENS, patch_index_token
from .image_processing import CLIP_MEAN, CLIP_STD

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]

CORPUS = """
An image of a snowman warming himself by a fire.
Describe this image in detail: the picture shows two dogs playing on green grass in a park.
Question: What is special about this image? Answer: a cat is sitting on a red chair.
Question: Where is the fire next to? Answer: the fire is next to the snowman.
It is a man riding a bicycle along the river under a blue sky with white clouds.
A woman holding an umbrella walks down a busy street at night with bright lights.
There is a small boat on the lake and mountains covered with snow in the background.
A plate of food with rice, vegetables and a piece of chicken on a wooden table.
Children are playing football on the beach near the sea while birds fly above them.
A coffee cup, a laptop and a book are on the desk next to the window.
The astronaut stands on the moon beside the flag, and the earth rises over the horizon.
A horse and a cow eat grass in the field in front of an old farm house.
Three people sit on a bench reading newspapers in the morning sun.
A black and white photo of a building with tall columns and large stairs.
The train crosses a bridge over the valley; trees with yellow and orange leaves.
A close-up of a flower with a bee collecting pollen from its petals.
"""


def state_dict_shapes(config: Kosmos2Config) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor of a KOSMOS-2 checkpoint (``lm_head`` included).

    Independent of the model classes, so tests can check the modules against it.
    """
    v, t, q = config.vision_config, config.text_config, config.latent_query_num
    h, d = v.hidden_size, t.embed_dim
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        shapes[f"{name}.bias"] = (n_out,)

    def norm(name: str, n: int) -> None:
        shapes[f"{name}.weight"] = (n,)
        shapes[f"{name}.bias"] = (n,)

    def attention(name: str, n: int) -> None:
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{name}.{proj}", n, n)

    vm = "vision_model.model"
    shapes[f"{vm}.embeddings.class_embedding"] = (h,)
    shapes[f"{vm}.embeddings.patch_embedding.weight"] = (h, v.num_channels, v.patch_size, v.patch_size)
    shapes[f"{vm}.embeddings.position_embedding.weight"] = (v.num_patches + 1, h)
    norm(f"{vm}.pre_layrnorm", h)
    for i in range(v.num_hidden_layers):
        layer = f"{vm}.encoder.layers.{i}"
        attention(f"{layer}.self_attn", h)
        norm(f"{layer}.layer_norm1", h)
        linear(f"{layer}.mlp.fc1", h, v.intermediate_size)
        linear(f"{layer}.mlp.fc2", v.intermediate_size, h)
        norm(f"{layer}.layer_norm2", h)
    norm(f"{vm}.post_layernorm", h)

    linear("image_to_text_projection.dense", h, d)
    shapes["image_to_text_projection.latent_query"] = (q, d)
    attention("image_to_text_projection.x_attn", d)

    tm = "text_model.model"
    shapes[f"{tm}.embed_tokens.weight"] = (t.vocab_size, d)
    for i in range(t.layers):
        layer = f"{tm}.layers.{i}"
        attention(f"{layer}.self_attn", d)
        norm(f"{layer}.self_attn.inner_attn_ln", d)
        norm(f"{layer}.self_attn_layer_norm", d)
        linear(f"{layer}.ffn.fc1", d, t.ffn_dim)
        norm(f"{layer}.ffn.ffn_layernorm", t.ffn_dim)
        linear(f"{layer}.ffn.fc2", t.ffn_dim, d)
        norm(f"{layer}.final_layer_norm", d)
    norm(f"{tm}.layer_norm", d)
    shapes["text_model.lm_head.weight"] = (t.vocab_size, d)
    return shapes


def random_state_dict(
    config: Kosmos2Config, seed: int = 0, std: float = 0.1, tied_name: str = "embed_tokens"
) -> dict[str, torch.Tensor]:
    """Random float32 weights for ``config``; the tied embedding is stored once, under ``tied_name``.

    Norm weights are drawn around 1 and everything else around 0, with a spread large enough
    that a tiny model's next-token logits are well separated (no near-ties under greedy decoding).
    """
    if tied_name not in ("embed_tokens", "lm_head"):
        raise ValueError("tied_name must be 'embed_tokens' or 'lm_head'")
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in state_dict_shapes(config).items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        is_norm_weight = name.endswith(".weight") and len(shape) == 1
        tensors[name] = 1.0 + 0.1 * noise if is_norm_weight else std * noise
    embed, head = "text_model.model.embed_tokens.weight", "text_model.lm_head.weight"
    if tied_name == "embed_tokens":
        del tensors[head]
    else:
        tensors[head] = tensors.pop(embed)
    return tensors


def build_tokenizer(with_tags: bool = True, corpus: str = CORPUS) -> Tokenizer:
    """A small sentencepiece-style (Unigram + Metaspace) tokenizer with the KOSMOS-2 id layout.

    The unigram pieces are ``corpus``'s words and characters scored by log frequency (computed
    here rather than by the library's trainer, whose parallel training is not reproducible).
    ``<s> <pad> </s> <unk>`` take ids 0-3, the pieces follow, then ``<mask>``; with ``with_tags``
    the 11 tags and 1024 patch-index tokens come last, as in the real checkpoint.
    """
    text = " ".join(line for line in corpus.splitlines() if line)
    counts = Counter("▁" + w for w in re.findall(r"\w+", text))
    counts.update(re.findall(r"[^\w\s]", text))
    counts.update(c for c in text if not c.isspace())
    counts["▁"] += len(text.split())
    total = sum(counts.values())
    pieces = sorted(((p, round(math.log(n / total), 6)) for p, n in counts.items()), key=lambda ps: (-ps[1], ps[0]))
    vocab = [(t, 0.0) for t in SPECIAL_TOKENS] + pieces
    tok = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>")))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    if with_tags:
        from tokenizers import AddedToken

        names = list(TAG_TOKENS) + [patch_index_token(i) for i in range(NUM_PATCH_INDEX_TOKENS)]
        tok.add_tokens([AddedToken(n, lstrip=True, rstrip=False, normalized=False) for n in names])
    return tok


def tiny_config(vocab_size: int, **overrides: Any) -> Kosmos2Config:
    """A small configuration; ``overrides`` may set ``text``/``vision`` dicts and top-level fields."""
    text = Kosmos2TextConfig(vocab_size=vocab_size, embed_dim=32, layers=2, ffn_dim=64, attention_heads=4)
    vision = Kosmos2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14
    )
    text = replace(text, **overrides.pop("text", {}))
    vision = replace(vision, **overrides.pop("vision", {}))
    return Kosmos2Config(text_config=text, vision_config=vision, **overrides)


def write_tiny_checkpoint(
    folder: str | Path,
    seed: int = 0,
    tied_name: str = "embed_tokens",
    tokenizer_with_tags: bool = True,
    processor_config_style: str = "legacy",
    config: Kosmos2Config | None = None,
    std: float = 0.1,
    corpus: str = CORPUS,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete hub-layout checkpoint to ``folder`` and return its path.

    Files: ``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json`` and either ``preprocessor_config.json``
    (``processor_config_style="legacy"``) or ``processor_config.json`` (``"new"``).
    ``config`` overrides the tiny architecture; its ``text_config.vocab_size`` is raised to the
    tokenizer's size when smaller (a full-size config keeps its 65037 ids). ``corpus`` gives the
    tokenizer's pieces; ``weights`` (for the final config) replace :func:`random_state_dict`'s.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(with_tags=tokenizer_with_tags, corpus=corpus)
    tok.save(str(folder / "tokenizer.json"))
    # The model's vocabulary always covers the tags and patch tokens, as the processor adds them.
    base = tok.get_vocab_size() + (0 if tokenizer_with_tags else len(TAG_TOKENS) + NUM_PATCH_INDEX_TOKENS)
    if config is None:
        config = tiny_config(base)
    else:
        vocab = max(base, config.text_config.vocab_size)
        config = replace(config, text_config=replace(config.text_config, vocab_size=vocab))
    config.save(folder / "config.json")
    if weights is None:
        weights = random_state_dict(config, seed=seed, std=std, tied_name=tied_name)
    save_file(
        weights,
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    _write_json(folder / "generation_config.json", {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1})
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "cls_token": "<s>",
        "sep_token": "</s>",
    }
    _write_json(folder / "special_tokens_map.json", special)
    tokenizer = {
        "model_max_length": 2048,
        "tokenizer_class": "XLMRobertaTokenizer",
        "processor_class": "Kosmos2Processor",
    }
    _write_json(folder / "tokenizer_config.json", {**special, **tokenizer})
    size = config.vision_config.image_size
    image = {
        "do_resize": True,
        "size": {"shortest_edge": size},
        "use_square_size": True,
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "Kosmos2Processor",
    }
    if processor_config_style == "legacy":
        _write_json(folder / "preprocessor_config.json", image)
    elif processor_config_style == "new":
        _write_json(
            folder / "processor_config.json",
            {
                "image_processor": image,
                "num_image_tokens": config.latent_query_num,
                "processor_class": "Kosmos2Processor",
            },
        )
    else:
        raise ValueError("processor_config_style must be 'legacy' or 'new'")
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kosmos2.tiny", description="Write the built-in tiny KOSMOS-2 checkpoint (random weights)."
    )
    parser.add_argument("folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_checkpoint(args.folder, seed=args.seed)
    print(f"tiny checkpoint written to {path}")


if __name__ == "__main__":
    main()
