"""kosmos2-shapes' recipe: the architecture fits the 12 MB budget, the start checkpoint loads in transformers with
the same logits as ours, and its deliberate start (places known to both the image and the patch-index tokens) is
what the docstring says."""

import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from kosmos2 import AutoProcessor, Kosmos2ForConditionalGeneration
from kosmos2.grounding import NUM_PATCH_INDEX_TOKENS, patch_index_token
from kosmos2.tiny import state_dict_shapes
from kosmos2.training.start import grid_features
from kosmos2.training.shapes_model import config, write_start

MB = 1_000_000


def test_the_architecture_fits_in_12_mb_of_float32():
    shapes = state_dict_shapes(config())
    stored = sum(math.prod(s) for name, s in shapes.items() if name != "text_model.lm_head.weight")
    assert 4 * stored <= 12 * MB


def test_grid_features_are_unit_rows_alike_for_near_cells_and_equal_across_grids_at_one_place():
    f = grid_features(32, 32, 64)
    assert f.shape == (1024, 64) and torch.allclose(f.norm(dim=1), torch.ones(1024))
    near, far = float(f[0] @ f[1]), float(f[0] @ f[1023])
    assert near > 0.8 and far < near
    # places, not cell numbers: cell (1, 1) of a 3x3 grid and cell (4, 4) of a 9x9 grid both sit at (0.5, 0.5)
    assert torch.allclose(grid_features(3, 3, 64)[4], grid_features(9, 9, 64)[40], atol=1e-6)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return write_start(tmp_path_factory.mktemp("shapes") / "start")


def test_the_start_checkpoint_gives_transformers_logits(start):
    from reference_model import reference_model

    ours = Kosmos2ForConditionalGeneration.from_pretrained(start).eval()
    processor = AutoProcessor.from_pretrained(start)
    inputs = processor(text="<grounding><phrase> a red circle</phrase>", images=Image.new("RGB", (80, 60), "red"),
                       return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        want = reference_model(start)(**inputs).logits
        got = ours(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_patch_index_tokens_start_as_their_cells_places(start):
    processor = AutoProcessor.from_pretrained(start)
    ids = processor.tokenizer.convert_tokens_to_ids([patch_index_token(i) for i in range(NUM_PATCH_INDEX_TOKENS)])
    embed = load_file(str(start / "model.safetensors"))["text_model.model.embed_tokens.weight"]
    dims = embed.shape[1]
    torch.testing.assert_close(embed[ids], grid_features(32, 32, dims))
    words = processor.tokenizer.convert_tokens_to_ids(["▁red", "▁circle"])
    assert float(embed[words, :32].abs().max()) == 0.0  # the place dimensions belong to places alone

