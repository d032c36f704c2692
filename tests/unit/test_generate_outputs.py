"""``generate``'s dictionary outputs (scores, logits, beam indices, several sequences per prompt) and
``compute_transition_scores``, against the reference's on the same checkpoints and inputs."""

from __future__ import annotations

import pytest
import torch

from kosmos2 import Kosmos2ForConditionalGeneration
from kosmos2.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from reference_model import CHECKPOINTS, pixel_values, prompt_inputs, reference_model, token_id

NEW = 10
TOL = 2e-4


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def pair(request, make_checkpoint):
    """(our model, the reference, a left-padded batch of three prompts)."""
    folder = make_checkpoint(request.param, **CHECKPOINTS[request.param])
    ours = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    g = token_id(folder, "<grounding>")
    inputs = prompt_inputs(folder, [[g, 10, 20, 30], [g, 11], [40, 50, 60, 70, 80, 90]])
    inputs["pixel_values"] = pixel_values(3, ours.config.vision_config.image_size)
    assert (inputs["attention_mask"] == 0).any()  # the batch is left-padded
    return ours, reference_model(folder), inputs


def _both(ours, ref, inputs, seed=None, **kwargs):
    kwargs = dict(max_new_tokens=NEW, return_dict_in_generate=True, output_scores=True, output_logits=True, **kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    got = ours.generate(**inputs, **kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        want = ref.generate(**inputs, **kwargs)
    return got, want


def _close_steps(got, want) -> None:
    assert len(got) == len(want)
    for step, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, step
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite), step  # the same tokens are banned (-inf)
        assert torch.allclose(a[finite], b[finite], atol=TOL, rtol=0), (step, (a[finite] - b[finite]).abs().max())


def _same_outputs(got, want) -> None:
    assert torch.equal(got.sequences, want.sequences), (got.sequences, want.sequences)
    _close_steps(got.scores, want.scores)
    _close_steps(got.logits, want.logits)


@pytest.mark.parametrize("options", [{}, dict(no_repeat_ngram_size=2, repetition_penalty=1.2)])
def test_greedy_outputs_match_reference(pair, options):
    ours, ref, inputs = pair
    got, want = _both(ours, ref, inputs, **options)
    assert isinstance(got, GenerateDecoderOnlyOutput)
    _same_outputs(got, want)
    for normalize in (False, True):
        assert torch.allclose(ours.compute_transition_scores(got.sequences, got.scores, normalize_logits=normalize),
                              ref.compute_transition_scores(want.sequences, want.scores, normalize_logits=normalize),
                              atol=TOL)


def test_sampling_outputs_with_several_sequences_match_reference(pair):
    ours, ref, inputs = pair
    got, want = _both(ours, ref, inputs, seed=5, do_sample=True, top_k=20, temperature=0.8, num_return_sequences=2)
    assert got.sequences.shape[0] == 2 * inputs["input_ids"].shape[0]
    _same_outputs(got, want)
    assert torch.allclose(ours.compute_transition_scores(got.sequences, got.logits, normalize_logits=True),
                          ref.compute_transition_scores(want.sequences, want.logits, normalize_logits=True), atol=TOL)


@pytest.mark.parametrize("returned", [1, 3])
def test_beam_search_outputs_match_reference(pair, returned):
    ours, ref, inputs = pair
    got, want = _both(ours, ref, inputs, num_beams=3, num_return_sequences=returned, length_penalty=0.8)
    assert isinstance(got, GenerateBeamDecoderOnlyOutput)
    _same_outputs(got, want)
    assert torch.allclose(got.sequences_scores, want.sequences_scores, atol=TOL)
    assert torch.equal(got.beam_indices.long(), want.beam_indices.long())
    transitions = ours.compute_transition_scores(got.sequences, got.scores, got.beam_indices)
    assert torch.allclose(transitions, ref.compute_transition_scores(want.sequences, want.scores, want.beam_indices),
                          atol=TOL)
    # the documented identity: summed transition scores over length ** penalty = sequences_scores
    lengths = (got.beam_indices >= 0).sum(dim=1)
    assert torch.allclose(transitions.sum(dim=1) / lengths ** 0.8, got.sequences_scores, atol=TOL)


def test_beam_outputs_with_early_eos_match_reference(pair):
    ours, ref, inputs = pair
    # a token the first row's best hypothesis really produces late, as EOS, and a penalty that favours
    # short hypotheses: some returned ones end before the longest
    eos = [int(ours.generate(**inputs, max_new_tokens=NEW, num_beams=3)[0, -3])]
    got, want = _both(ours, ref, inputs, num_beams=3, num_return_sequences=2, eos_token_id=eos, length_penalty=-2.0)
    _same_outputs(got, want)
    assert torch.equal(got.beam_indices.long(), want.beam_indices.long())
    assert (got.beam_indices < 0).any()  # some hypothesis ended before the longest
    assert torch.allclose(ours.compute_transition_scores(got.sequences, got.scores, got.beam_indices),
                          ref.compute_transition_scores(want.sequences, want.scores, want.beam_indices), atol=TOL)


def test_default_return_stays_a_tensor_and_bad_counts_are_refused(pair):
    ours, _, inputs = pair
    out = ours.generate(**inputs, max_new_tokens=2)
    assert isinstance(out, torch.Tensor)
    with pytest.raises(ValueError, match="num_return_sequences must be 1"):
        ours.generate(**inputs, max_new_tokens=2, num_return_sequences=2)
    with pytest.raises(ValueError, match="at most num_beams"):
        ours.generate(**inputs, max_new_tokens=2, num_beams=2, num_return_sequences=3)
    without_scores = ours.generate(**inputs, max_new_tokens=2, num_beams=2, return_dict_in_generate=True)
    assert without_scores.scores is None and without_scores.sequences_scores is None
    assert without_scores.beam_indices is not None
