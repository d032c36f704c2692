"""The start of a model trained from scratch (kosmos2-shapes): weights in which where things are is known from
the first step, on both the image's side and the box tokens' side.

Trained from the usual random start, a small KOSMOS-2 learns the colours of the shapes within 500 steps but
not where they are: after 1500 steps a box's place was still uncorrelated with its shape's (any spread, any
learning rate from 5e-4 to 2e-3). Reading a place out of 64 image tokens needs an attention that picks the
right ones, and nothing rewards it until it half works. From this start the place is correlated (r = 0.83)
by step 500.
"""

from __future__ import annotations

import math

import torch

from ..config import Kosmos2Config
from ..grounding import GRID, NUM_PATCH_INDEX_TOKENS
from ..tiny import state_dict_shapes

FREQUENCIES = 8
PLACES = 4 * FREQUENCIES  # the dimensions place features fill: sin and cos of x and y at each frequency
# the gains that carry places through the projection: the vision tokens' place features (about half their unit
# norm) come out of dense 4 long, so that each latent query (its own place's features, 1 long) attends mostly to
# the patches at its place, and the values keep a little of the place beside what the patches show
PLACE_DENSE = 8.0
PLACE_ATTENTION = 6.0
PLACE_VALUE = 0.5


def grid_features(columns: int, rows: int, dims: int) -> torch.Tensor:
    """(rows * columns, dims) features of each cell's centre (x, y) in [0, 1], row by row: sines and cosines of
    x and y at :data:`FREQUENCIES` frequencies from pi / 2 to 4 pi (smooth: neighbouring cells are alike, so
    that a softmax over the cells' tokens is a blob that moves towards its target) in the first :data:`PLACES`
    dimensions, zeros after; each row's norm is 1. A place has the same features on any grid."""
    y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(columns) + 0.5) / columns, indexing="ij")
    scale = math.pi * 2 ** torch.linspace(-1, 2, FREQUENCIES)
    angles = torch.cat([x.reshape(-1, 1) * scale, y.reshape(-1, 1) * scale], dim=1)
    features = torch.cat([angles.sin(), angles.cos()], dim=1) / math.sqrt(2 * FREQUENCIES)
    return torch.nn.functional.pad(features, (0, dims - features.shape[1]))


def initial_state_dict(config: Kosmos2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 weights to train ``config`` from scratch (the tied embedding stored once).

    Each matrix is drawn with spread 1/sqrt(its inputs), so that signals keep their size through small widths;
    the token embedding with 1/sqrt(width) (spread 1 once scaled); norms 1, biases 0. Then, in the first
    :data:`PLACES` dimensions (the place dimensions, which no word's embedding uses):

    - the patch-index tokens' embeddings (which the tied LM head reads out) and the vision tower's position
      embeddings are :func:`grid_features` of their cells' centres;
    - the projection's dense layer carries the place dimensions through, and the latent queries are the
      features of an even grid, so that its attention's first head makes each image token a summary of its
      own region;
    - its second head's keys see no places (it looks for what stands out) and its values are the places, so
      that every image token also says where what stands out is, in the next :data:`PLACES` dimensions;
    - each decoder attention passes that on into the place dimensions, where the LM head reads a box's cell.
    """
    gen = torch.Generator().manual_seed(seed)
    v, t = config.vision_config, config.text_config
    side = v.image_size // v.patch_size
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in state_dict_shapes(config).items():
        if name == "text_model.lm_head.weight":
            continue
        if name.endswith(".bias"):
            tensors[name] = torch.zeros(shape)
        elif len(shape) == 1 and not name.endswith("class_embedding"):
            tensors[name] = torch.ones(shape)
        else:
            spread = {"latent_query": 1.0, "class_embedding": 1.0, "embed_tokens.weight": shape[-1] ** -0.5}
            key = next((k for k in spread if name.endswith(k)), None)
            std = spread[key] if key else math.prod(shape[1:]) ** -0.5
            tensors[name] = std * torch.randn(shape, generator=gen, dtype=torch.float32)
    embed = tensors["text_model.model.embed_tokens.weight"]
    embed[:-NUM_PATCH_INDEX_TOKENS, : 2 * PLACES] = 0.0
    embed[-NUM_PATCH_INDEX_TOKENS:] = grid_features(GRID, GRID, t.embed_dim)  # the tokenizer puts them last
    position = tensors["vision_model.model.embeddings.position_embedding.weight"]
    position[1:] = math.sqrt(v.hidden_size) * grid_features(side, side, v.hidden_size)
    position[0] = 0.0  # the class token's
    queries = tensors["image_to_text_projection.latent_query"]
    across = math.isqrt(queries.shape[0])
    if across * across == queries.shape[0]:
        queries[:] = grid_features(across, across, t.embed_dim)
    _carry(tensors["image_to_text_projection.dense.weight"], PLACE_DENSE)
    x_attn = "image_to_text_projection.x_attn"
    for proj, gain in {"q_proj": PLACE_ATTENTION, "k_proj": PLACE_ATTENTION, "v_proj": PLACE_VALUE}.items():
        _carry(tensors[f"{x_attn}.{proj}.weight"], gain)
    _carry(tensors[f"{x_attn}.out_proj.weight"], 1.0)
    for proj in ("v_proj", "out_proj"):  # what the patches show, apart from where they are
        tensors[f"{x_attn}.{proj}.weight"][2 * PLACES :, :PLACES] = 0.0
    head = t.embed_dim // t.attention_heads
    tensors[f"{x_attn}.k_proj.weight"][head : 2 * head, :PLACES] = 0.0
    _carry(tensors[f"{x_attn}.v_proj.weight"], 1.0, rows=head)
    _carry(tensors[f"{x_attn}.out_proj.weight"], 1.0, rows=PLACES, columns=head)
    for i in range(t.layers):
        _carry(tensors[f"text_model.model.layers.{i}.self_attn.v_proj.weight"], 1.0, columns=PLACES)
        _carry(tensors[f"text_model.model.layers.{i}.self_attn.out_proj.weight"], 1.0)
    return tensors


def _carry(weight: torch.Tensor, gain: float, rows: int = 0, columns: int = 0) -> None:
    """Make a projection pass :data:`PLACES` input dimensions from ``columns`` on to as many outputs from
    ``rows`` on, times ``gain`` (and nothing else to those outputs)."""
    weight[rows : rows + PLACES] = 0.0
    weight[rows : rows + PLACES, columns : columns + PLACES] = gain * torch.eye(PLACES)
