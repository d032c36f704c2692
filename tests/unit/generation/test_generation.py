"""Generation against the reference implementation's ``generate`` (identical ids), plus the pure helpers."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest
import torch

from kosmos2 import Kosmos2ForConditionalGeneration
from kosmos2.generation import (
    TokenStreamer,
    apply_repetition_penalty,
    ban_repeated_ngrams,
    top_k_filter,
    top_p_filter,
)
from reference_model import CHECKPOINTS, pixel_values, prompt_inputs, reference_model, token_id

NEW = 12


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def pair(request, make_checkpoint):
    """(our model, the reference model, a left-padded batch of three prompts and images)."""
    folder = make_checkpoint(request.param, **CHECKPOINTS[request.param])
    ours = Kosmos2ForConditionalGeneration.from_pretrained(folder)
    ref = reference_model(folder)
    return ours, ref, _batch(folder, ours.config.vision_config.image_size)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint), _batch(tiny_checkpoint, 56)


def _batch(folder: Path, size: int) -> dict[str, torch.Tensor]:
    g = token_id(folder, "<grounding>")
    inputs = prompt_inputs(folder, [[g, 10, 20, 30], [g, 11], [40, 50, 60, 70, 80, 90]])
    inputs["pixel_values"] = pixel_values(3, size)
    return inputs


def _same_ids(ours, ref, inputs, seed: int | None = None, **kwargs) -> torch.Tensor:
    if seed is not None:
        torch.manual_seed(seed)
    got = ours.generate(**inputs, max_new_tokens=NEW, **kwargs)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        want = ref.generate(**inputs, max_new_tokens=NEW, **kwargs)
    assert got.shape == want.shape
    assert torch.equal(got, want), (got[:, -NEW:], want[:, -NEW:])
    return got


def _eos_from_greedy(ours, inputs) -> list[int]:
    """EOS ids that the greedy continuation of two rows actually produces, so rows finish early."""
    ids = ours.generate(**inputs, max_new_tokens=2)[:, -1]
    return sorted({int(ids[0]), int(ids[1])})


def test_greedy_matches_reference(pair):
    ours, ref, inputs = pair
    got = _same_ids(ours, ref, inputs)
    assert torch.equal(got[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    single = {k: v[:1] for k, v in inputs.items()}
    _same_ids(ours, ref, single)


def test_greedy_rows_finish_with_pad(pair):
    ours, ref, inputs = pair
    eos = _eos_from_greedy(ours, inputs)
    got = _same_ids(ours, ref, inputs, eos_token_id=eos)
    assert (got[:, -1] == 1).any()


@pytest.mark.parametrize(
    "options",
    [
        dict(num_beams=3),
        dict(num_beams=3, early_stopping=True),
        dict(num_beams=3, length_penalty=-0.5, early_stopping="never"),
    ],
)
def test_beam_search_matches_reference(pair, options):
    ours, ref, inputs = pair
    _same_ids(ours, ref, inputs, **options)
    _same_ids(ours, ref, inputs, eos_token_id=_eos_from_greedy(ours, inputs), **options)


@pytest.mark.parametrize(
    "options",
    [dict(no_repeat_ngram_size=2), dict(no_repeat_ngram_size=2, num_beams=3), dict(repetition_penalty=1.3),
     dict(min_new_tokens=5), dict(use_cache=False)],
)
def test_processors_and_cacheless_decoding_match_reference(pair, options):
    ours, ref, inputs = pair
    eos = {"eos_token_id": _eos_from_greedy(ours, inputs)} if "min_new_tokens" in options else {}
    _same_ids(ours, ref, inputs, **options, **eos)


@pytest.mark.parametrize(
    "options",
    [dict(top_k=50), dict(temperature=0.7, top_k=20, top_p=0.9), dict(num_beams=2, top_k=50)],
)
def test_sampling_matches_reference_with_the_same_global_seed(pair, options):
    ours, ref, inputs = pair  # (the reference's sampling default is top_k=50, so it is passed explicitly)
    _same_ids(ours, ref, inputs, seed=3, do_sample=True, **options)


def test_bfloat16_generation_matches_reference(tiny_checkpoint):
    ours = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.bfloat16)
    ref = reference_model(tiny_checkpoint).to(torch.bfloat16)
    inputs = _batch(tiny_checkpoint, 56)
    _same_ids(ours, ref, inputs)
    _same_ids(ours, ref, inputs, num_beams=3)


def test_sampling_is_reproducible_with_a_generator(tiny):
    model, inputs = tiny

    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return model.generate(**inputs, max_new_tokens=NEW, do_sample=True, generator=generator)

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_image_embeds_can_replace_pixel_values(tiny):
    model, inputs = tiny
    embeds = model.get_image_features(inputs["pixel_values"])[0]
    from_embeds = model.generate(**dict(inputs, pixel_values=None), image_embeds=embeds, max_new_tokens=NEW)
    assert torch.equal(from_embeds, model.generate(**inputs, max_new_tokens=NEW))


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []
        self.ended = 0

    def put(self, ids: torch.Tensor) -> None:
        self.calls.append(ids.clone())

    def end(self) -> None:
        self.ended += 1


def test_streamer_receives_prompt_then_exactly_the_new_tokens(tiny, tiny_checkpoint):
    model, inputs = tiny
    recorder = _Recorder()
    eos = _eos_from_greedy(model, inputs)
    out = model.generate(**inputs, max_new_tokens=NEW, eos_token_id=eos, streamer=recorder)
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(recorder.calls[0], inputs["input_ids"])
    assert torch.equal(torch.stack(recorder.calls[1:], dim=1), out[:, prompt_len:])
    assert recorder.ended == 1


def test_token_streamer_iterates_in_another_thread(tiny):
    model, inputs = tiny
    streamer = TokenStreamer(timeout=30)
    result = {}
    thread = threading.Thread(
        target=lambda: result.setdefault("ids", model.generate(**inputs, max_new_tokens=NEW, streamer=streamer))
    )
    thread.start()
    steps = list(streamer)
    thread.join()
    assert torch.equal(torch.tensor(steps).T, result["ids"][:, -NEW:])
    assert torch.equal(streamer.prompt_ids, inputs["input_ids"])
    with pytest.raises(queue.Empty):
        next(TokenStreamer(timeout=0.01))


def test_streamer_is_ended_when_generate_rejects_its_arguments(tiny):
    """A consumer iterating a streamer in another thread must not wait forever on a failed call."""
    model, inputs = tiny
    for bad in ({"max_new_tokens": 0}, {"max_new_tokens": 2, "num_beams": 2},
                {"max_new_tokens": 2, "image_embeds_position_mask": None}):
        recorder = _Recorder()
        with pytest.raises(ValueError):
            model.generate(**{**inputs, **bad}, streamer=recorder)
        assert recorder.ended == 1 and recorder.calls == []


def test_token_streamer_ends_once_and_can_be_reused(tiny):
    model, inputs = tiny
    streamer = TokenStreamer(timeout=30)
    first = model.generate(**inputs, max_new_tokens=3, streamer=streamer)
    streamer.end()  # a caller's extra end() must not cut the next run short
    assert torch.tensor(list(streamer)).T.tolist() == first[:, -3:].tolist()
    second = model.generate(**inputs, max_new_tokens=2, streamer=streamer)
    assert torch.tensor(list(streamer)).T.tolist() == second[:, -2:].tolist()


def test_bad_generation_arguments(tiny):
    model, inputs = tiny
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(**inputs)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(**inputs, max_new_tokens=0)
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(**inputs, max_new_tokens=2, num_beams=0)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(**inputs, max_new_tokens=2, num_beams=2, streamer=_Recorder())
    with pytest.raises(ValueError, match="batch size mismatch"):
        model.generate(**dict(inputs, pixel_values=inputs["pixel_values"][:2]), max_new_tokens=2)
    bad_mask = inputs["image_embeds_position_mask"].clone()
    bad_mask[2, -1] = 1
    with pytest.raises(ValueError, match="exactly 64 ones"):
        model.generate(**dict(inputs, image_embeds_position_mask=bad_mask), max_new_tokens=2)
    with pytest.warns(UserWarning, match="do_sample"):
        model.generate(**inputs, max_new_tokens=1, temperature=0.5)
    with pytest.warns(UserWarning, match="do_sample"):
        model.generate(**inputs, max_new_tokens=1, top_p=0.5)


# ----------------------------------------------------------------------------- pure helpers (hand-derived values)


def test_top_k_and_top_p_filters():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    inf = float("-inf")
    assert top_k_filter(scores, 2).tolist() == [[inf, 3.0, 2.0, inf]]
    # probabilities of [ln 1, ln 2, ln 3, ln 4] are 0.1 0.2 0.3 0.4: top_p 0.6 drops 0.1 and 0.2 (total 0.3 <= 0.4)
    logp = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).log()
    kept = top_p_filter(logp, 0.6)
    assert torch.isinf(kept[0, :2]).all() and torch.isfinite(kept[0, 2:]).all()


def test_repetition_penalty_and_ngram_ban():
    scores = torch.tensor([[2.0, -2.0, 4.0, 1.0]])
    seq = torch.tensor([[0, 1, 0]])
    assert apply_repetition_penalty(scores, seq, 2.0).tolist() == [[1.0, -4.0, 4.0, 1.0]]
    skip_two = apply_repetition_penalty(scores, seq, 2.0, ignored=torch.tensor([[True, True]]))
    assert skip_two.tolist() == [[1.0, -2.0, 4.0, 1.0]]
    # "3 1 2 3" ends with 3; "3 1" occurred, so 1 is banned for a 2-gram ban
    banned = ban_repeated_ngrams(scores, torch.tensor([[3, 1, 2, 3]]), 2)
    assert banned.tolist() == [[2.0, float("-inf"), 4.0, 1.0]]


def test_ngram_ban_reads_rows_without_their_ignored_positions():
    inf = float("-inf")
    scores = torch.zeros(2, 5)
    # row 0: "2 [0 0] 3 2" reads as "2 3 2": "2 3" occurred, 3 banned; the pads' "2 0" bans nothing.
    # row 1 has nothing ignored: "4 0 0 3 4" ends with 4 and "4 0" occurred, so 0 is banned.
    seq = torch.tensor([[2, 0, 0, 3, 2], [4, 0, 0, 3, 4]])
    ignored = torch.tensor([[False, True, True], [False, False, False]])
    got = ban_repeated_ngrams(scores, seq, 2, ignored)
    assert got.tolist() == [[0.0, 0.0, 0.0, inf, 0.0], [inf, 0.0, 0.0, 0.0, 0.0]]
    # the same as each row alone, written without its ignored positions
    alone = ban_repeated_ngrams(scores[:1], torch.tensor([[2, 3, 2]]), 2)
    assert got[:1].tolist() == alone.tolist()


def test_a_token_streamer_whose_run_fails_before_its_prompt_ends_for_its_reader(tiny):
    """A reader waiting on the streamer gets the end (not a hang) when generate refuses its arguments."""
    model, inputs = tiny
    streamer = TokenStreamer(timeout=5)
    with pytest.raises(ValueError):
        model.generate(**inputs, max_new_tokens=0, streamer=streamer)
    assert list(streamer) == [] and streamer.prompt_ids is None
    ids = model.generate(**inputs, max_new_tokens=2, streamer=streamer)  # the next run streams as usual
    assert torch.tensor(list(streamer)).T.tolist() == ids[:, -2:].tolist()
