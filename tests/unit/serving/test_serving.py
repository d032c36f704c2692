"""Serving: the image prefix cache and batched generation give the tokens of a lone, uncached run.

The oracle is the reference implementation's ``generate`` on one unpadded row (and our plain
``generate`` where the reference cannot take our random generator: sampling).

Batch sizes never depend on timing: batcher tests use ``gather_s=0`` (no gathering window) and
queue concurrent requests inside ``Batcher.hold()``; every wait has a deadline (``WAIT_S``).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from kosmos2 import AutoProcessor, Kosmos2ForConditionalGeneration
from kosmos2.generation import DecodingSettings, TokenStreamer
from kosmos2.serving import Batcher, Engine, PrefixCache, PrefixEntry, RowStream, follow, split_batch, split_row
from reference_model import reference_model

PROMPTS = (
    "<grounding> An image of",
    "<grounding><phrase> a snowman</phrase>",
    "<grounding> Question: What is special about this image? Answer:",
)
NEW = 8
WAIT_S = 120  # deadline of every wait: only a hang reaches it, however loaded the machine


@pytest.fixture(scope="module")
def env(tiny_checkpoint):
    """(our model, our processor, the reference model, three different images)."""
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 10 * i, 70, 3), dtype=np.uint8)) for i in range(3)]
    model = Kosmos2ForConditionalGeneration.from_pretrained(tiny_checkpoint)
    return model, AutoProcessor.from_pretrained(tiny_checkpoint), reference_model(tiny_checkpoint), images


def _inputs(processor, prompt, image):
    return dict(processor(text=prompt, images=image, return_tensors="pt"))


def _reference(ref, inputs, **kwargs):
    with torch.no_grad():
        return ref.generate(**inputs, max_new_tokens=NEW, **kwargs)


def _first_logits(engine, inputs):
    ready = engine.prepare(engine.rows(**inputs))
    with torch.no_grad():
        return ready.decoder(ready.sequences, ready.attention_mask)


def _until_eos(tokens: list[int], eos: int = 2) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


# ----------------------------------------------------------------------------- the prefix cache


def test_several_prompts_on_one_image_match_the_reference(env):
    model, processor, ref, images = env
    engine = Engine(model)
    for prompt in PROMPTS:
        inputs = _inputs(processor, prompt, images[0])
        assert torch.equal(engine.generate(**inputs, max_new_tokens=NEW), _reference(ref, inputs))
    assert (engine.prefixes.misses, engine.prefixes.hits, len(engine.prefixes)) == (1, len(PROMPTS) - 1, 1)


def test_cached_beam_search_and_sampling_match_the_uncached_path(env):
    model, processor, ref, images = env
    engine = Engine(model)
    warm = _inputs(processor, PROMPTS[0], images[1])
    engine.generate(**warm, max_new_tokens=1)
    inputs = _inputs(processor, PROMPTS[2], images[1])
    beams = engine.generate(**inputs, max_new_tokens=NEW, num_beams=3)
    assert torch.equal(beams, _reference(ref, inputs, num_beams=3))
    sampling = dict(max_new_tokens=NEW, do_sample=True, temperature=0.7, top_p=0.9)
    got = engine.generate(**inputs, generator=torch.Generator().manual_seed(3), **sampling)
    want = model.generate(**inputs, generator=torch.Generator().manual_seed(3), **sampling)
    assert torch.equal(got, want)
    assert engine.prefixes.hits == 2 and engine.prefixes.misses == 1


def test_cold_and_cached_first_logits_match_the_reference_forward(env):
    model, processor, ref, images = env
    engine = Engine(model)
    inputs = _inputs(processor, PROMPTS[1], images[2])
    with torch.no_grad():
        want = ref(**inputs).logits[:, -1]
    cold = _first_logits(engine, inputs)
    cached = _first_logits(engine, inputs)
    assert engine.prefixes.hits == 1
    torch.testing.assert_close(cold, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached, want, rtol=1e-4, atol=1e-4)


def test_different_images_do_not_collide(env):
    model, processor, ref, images = env
    engine = Engine(model)
    logits = []
    for image in images[:2]:
        inputs = _inputs(processor, PROMPTS[0], image)
        with torch.no_grad():
            want = ref(**inputs).logits[:, -1]
        logits.append(_first_logits(engine, inputs))
        torch.testing.assert_close(logits[-1], want, rtol=1e-4, atol=1e-4)
    assert len(engine.prefixes) == 2 and engine.prefixes.hits == 0
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)


def test_the_lru_keeps_the_most_recently_used_images(env):
    model, processor, _, images = env
    engine = Engine(model, max_images=2)
    keys = [engine.rows(**_inputs(processor, PROMPTS[0], image))[0].key for image in images]
    assert len(set(keys)) == 3
    assert engine.rows(**_inputs(processor, PROMPTS[1], images[0]))[0].key == keys[0]  # same image, same prefix
    for image in (images[0], images[1], images[0], images[2]):
        engine.generate(**_inputs(processor, PROMPTS[0], image), max_new_tokens=1)
    assert engine.prefixes.keys() == [keys[0], keys[2]]  # images[1] was the least recently used
    assert (engine.prefixes.hits, engine.prefixes.misses) == (1, 3)


def test_prefix_cache_bound_and_order():
    cache = PrefixCache(max_entries=2)
    entry = PrefixEntry(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    for key in "abc":
        cache.put(key, entry)
    assert cache.keys() == ["b", "c"] and len(cache) == 2
    assert cache.get("a") is None and cache.get("b") is entry
    assert cache.keys() == ["c", "b"]


# ----------------------------------------------------------------------------- batches


def _batch(processor, images):
    return dict(processor(text=list(PROMPTS), images=list(images), return_tensors="pt", padding=True))


def test_batched_rows_get_the_tokens_of_lone_rows(env):
    model, processor, ref, images = env
    batch = _batch(processor, images)
    assert (batch["attention_mask"] == 0).any(), "the test needs left-padded rows"
    got = Engine(model).generate(**batch, max_new_tokens=NEW)
    assert torch.equal(got[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    for i, (prompt, image) in enumerate(zip(PROMPTS, images)):
        want = _reference(ref, _inputs(processor, prompt, image))
        assert _until_eos(got[i, -NEW:].tolist()) == _until_eos(want[0, -NEW:].tolist())


@pytest.mark.parametrize("penalties", [dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2),
                                       dict(repetition_penalty=0.7, no_repeat_ngram_size=3)])
def test_batched_rows_with_penalties_get_the_tokens_of_lone_rows(env, penalties):
    """The pads in the middle of a batched row are invisible to the penalty and the n-gram ban, so a
    batch (through the engine and through the batcher) gives each row the reference's lone tokens."""
    model, processor, ref, images = env
    batch = _batch(processor, images)
    got = Engine(model).generate(**batch, max_new_tokens=NEW, **penalties)
    batcher = Batcher(Engine(model), max_batch_size=4, gather_s=0)
    streams = batcher.submit_batch(**batch, max_new_tokens=NEW, **penalties)  # queues its 3 rows at once
    batched = [s.result(timeout=WAIT_S) for s in streams]
    batcher.close()
    assert batcher.batch_sizes == [3]
    changed = False
    for i, (prompt, image) in enumerate(zip(PROMPTS, images)):
        want = _reference(ref, _inputs(processor, prompt, image), **penalties)[0, -NEW:].tolist()
        assert _until_eos(got[i, -NEW:].tolist()) == batched[i] == _until_eos(want)
        changed |= want != _reference(ref, _inputs(processor, prompt, image))[0, -NEW:].tolist()
    assert changed, "the penalties should change some row's tokens, or this test proves nothing"


def test_batched_decode_logits_match_lone_rows_unlike_the_shifted_reference_batch(env):
    """Per-step logits of each batched row equal the reference's for the row alone; the reference's own
    batched generate (positions shifted by the pad count) does not, which shows the check can fail."""
    model, processor, ref, images = env
    batch = _batch(processor, images)
    engine = Engine(model)
    ready = engine.prepare(engine.rows(**batch), max_new_tokens=NEW)
    sequences, attention, steps = ready.sequences, ready.attention_mask, []
    with torch.no_grad():
        for _ in range(NEW):
            steps.append(ready.decoder(sequences, attention))
            sequences = torch.cat([sequences, steps[-1].argmax(dim=-1, keepdim=True)], dim=1)
            attention = torch.nn.functional.pad(attention, (0, 1), value=1)
        shifted = ref.generate(**batch, max_new_tokens=NEW, output_logits=True, return_dict_in_generate=True).logits
    padded_row = int((batch["attention_mask"] == 0).sum(dim=1).argmax())
    for i, (prompt, image) in enumerate(zip(PROMPTS, images)):
        with torch.no_grad():
            lone = ref.generate(**_inputs(processor, prompt, image), max_new_tokens=NEW, output_logits=True,
                                return_dict_in_generate=True).logits
        for step, (ours, want) in enumerate(zip(steps, lone)):
            torch.testing.assert_close(ours[i], want[0], rtol=1e-4, atol=1e-4, msg=f"row {i} step {step}")
        if i == padded_row:
            assert not torch.allclose(shifted[1][i], lone[1][0], atol=1e-3)


def test_rows_on_one_image_compute_its_prefix_once(env):
    model, processor, ref, images = env
    engine = Engine(model)
    batch = dict(processor(text=list(PROMPTS[:2]), images=[images[0]] * 2, return_tensors="pt", padding=True))
    got = engine.generate(**batch, max_new_tokens=NEW)
    assert (engine.prefixes.misses, engine.prefixes.hits, len(engine.prefixes)) == (1, 0, 1)
    for i, prompt in enumerate(PROMPTS[:2]):
        want = _reference(ref, _inputs(processor, prompt, images[0]))
        assert _until_eos(got[i, -NEW:].tolist()) == _until_eos(want[0, -NEW:].tolist())


def test_engine_streams_the_prompt_then_each_step(env):
    model, processor, _, images = env
    batch = _batch(processor, images)
    streamer = TokenStreamer(timeout=WAIT_S)
    got = Engine(model).generate(**batch, max_new_tokens=NEW, streamer=streamer)
    steps = list(streamer)
    assert torch.equal(streamer.prompt_ids, batch["input_ids"])
    assert torch.equal(torch.tensor(steps).T, got[:, -len(steps):])


# ----------------------------------------------------------------------------- the batcher


def _row_args(processor, prompt, image):
    inputs = _inputs(processor, prompt, image)
    return inputs["pixel_values"][0], inputs["input_ids"][0], inputs["image_embeds_position_mask"][0]


def _join(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + WAIT_S
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"a caller thread was still waiting after {WAIT_S} s"


def test_batcher_gives_each_concurrent_caller_its_own_tokens(env):
    model, processor, ref, images = env
    batcher = Batcher(Engine(model), max_batch_size=4, gather_s=0)
    limits = (NEW, NEW - 3, NEW + 2)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def user(i: int) -> None:
        try:
            args = _row_args(processor, PROMPTS[i], images[i])
            results[i] = list(batcher.submit(*args, max_new_tokens=limits[i], timeout=WAIT_S))
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(PROMPTS))]
    with batcher.hold():  # the callers submit from their own threads; their rows wait for the release
        for t in threads:
            t.start()
        assert batcher.wait_pending(len(PROMPTS), timeout=WAIT_S), f"the callers did not submit in {WAIT_S} s"
    _join(threads)
    batcher.close()
    assert errors == []
    assert batcher.batch_sizes == [3]
    for i, (prompt, image) in enumerate(zip(PROMPTS, images)):
        with torch.no_grad():
            want = ref.generate(**_inputs(processor, prompt, image), max_new_tokens=limits[i])
        assert results[i] == _until_eos(want[0, -limits[i]:].tolist())


def test_batcher_runs_different_settings_apart_and_survives_a_cancelled_row(env):
    model, processor, ref, images = env
    batcher = Batcher(Engine(model), max_batch_size=4, gather_s=0)
    with batcher.hold():  # all three wait together: the cancelled row is in the greedy row's batch
        greedy = batcher.submit(*_row_args(processor, PROMPTS[0], images[0]), max_new_tokens=NEW)
        dropped = batcher.submit(*_row_args(processor, PROMPTS[1], images[1]), max_new_tokens=NEW)
        dropped.cancel()
        beams = batcher.submit(*_row_args(processor, PROMPTS[2], images[2]), max_new_tokens=NEW, num_beams=2)
    want = _reference(ref, _inputs(processor, PROMPTS[0], images[0]))
    assert greedy.result(timeout=WAIT_S) == _until_eos(want[0, -NEW:].tolist())
    want_beams = _reference(ref, _inputs(processor, PROMPTS[2], images[2]), num_beams=2)
    assert beams.result(timeout=WAIT_S) == _until_eos(want_beams[0, -NEW:].tolist())
    assert list(dropped) == []
    batcher.close()
    assert batcher.batch_sizes == [1, 1]  # greedy without the cancelled row, then the beams alone


def test_a_submitted_processor_batch_streams_every_row_like_a_lone_run(env):
    model, processor, ref, images = env
    batcher = Batcher(Engine(model), gather_s=0)  # each submit_batch queues its 3 rows at once
    streams = batcher.submit_batch(**_batch(processor, images), max_new_tokens=NEW, timeout=WAIT_S)
    updates = list(follow(streams))
    assert len(updates) >= 2 and [len(row) for row in updates[0]] == [1, 1, 1]
    for i, (prompt, image) in enumerate(zip(PROMPTS, images)):
        want = _reference(ref, _inputs(processor, prompt, image))
        assert updates[-1][i] == streams[i].result(timeout=WAIT_S) == _until_eos(want[0, -NEW:].tolist())
    early = follow(batcher.submit_batch(**_batch(processor, images), max_new_tokens=NEW, timeout=WAIT_S))
    first = next(early)
    early.close()  # the listener went away: its rows are cancelled, the batch stops
    batcher.close()
    assert [len(row) for row in first] == [1, 1, 1]
    assert batcher.batch_sizes == [3, 3]


def test_a_hold_keeps_requests_waiting_then_they_run_in_full_batches(env):
    """Inside ``hold()`` nothing runs; on release the rows go out as batches of ``max_batch_size``,
    oldest first. ``close()`` inside a hold still finishes the waiting requests."""
    model, processor, ref, images = env
    batcher = Batcher(Engine(model), max_batch_size=2, gather_s=0)
    with batcher.hold():
        with batcher.hold():  # holds nest: the outer one still holds after the inner one ends
            streams = [batcher.submit(*_row_args(processor, p, i), max_new_tokens=NEW, timeout=WAIT_S)
                       for p, i in zip(PROMPTS, images)]
        assert batcher.wait_pending(len(PROMPTS), timeout=0)  # none taken yet
        assert batcher.batch_sizes == [] and not any(s.done.is_set() for s in streams)
    for stream, prompt, image in zip(streams, PROMPTS, images):
        want = _reference(ref, _inputs(processor, prompt, image))
        assert stream.result(timeout=WAIT_S) == _until_eos(want[0, -NEW:].tolist())
    assert batcher.batch_sizes == [2, 1]
    with batcher.hold():
        last = batcher.submit(*_row_args(processor, PROMPTS[0], images[0]), max_new_tokens=2)
        closer = threading.Thread(target=batcher.close)
        closer.start()
        closer.join(timeout=WAIT_S)
        assert not closer.is_alive(), f"close() inside a hold did not return in {WAIT_S} s"
    assert len(last.result(timeout=0)) >= 1 and batcher.batch_sizes == [2, 1, 1]


def test_batcher_raises_a_batch_error_in_each_caller(env, monkeypatch):
    model, processor, _, images = env
    engine = Engine(model)
    batcher = Batcher(engine, gather_s=0)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "run", broken)
    with batcher.hold():  # both rows in one batch: each of its callers gets the error
        streams = [batcher.submit(*_row_args(processor, p, images[0]), max_new_tokens=2) for p in PROMPTS[:2]]
    for stream in streams:
        with pytest.raises(RuntimeError, match="boom"):
            stream.result(timeout=WAIT_S)
    batcher.close()
    assert batcher.batch_sizes == [2]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(*_row_args(processor, PROMPTS[0], images[0]), max_new_tokens=2)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors(env):
    model, processor, _, images = env
    engine = Engine(model)
    inputs = _inputs(processor, PROMPTS[0], images[0])
    ids, slots = inputs["input_ids"][0], inputs["image_embeds_position_mask"][0]
    pixels = inputs["pixel_values"][0]
    with pytest.raises(ValueError, match="no image slots"):
        split_row(pixels, ids, torch.zeros_like(slots), 1)
    last = int(slots.nonzero().max()) + 1
    with pytest.raises(ValueError, match="no tokens after"):
        split_row(pixels, ids[:last], slots[:last], 1)
    with pytest.raises(ValueError, match="pixel_values"):
        engine.generate(input_ids=inputs["input_ids"], image_embeds_position_mask=inputs["image_embeds_position_mask"],
                        max_new_tokens=2)
    with pytest.raises(ValueError, match=r"shape \(3, 56, 56\)"):
        engine.row(torch.zeros(3, 20, 20), ids, slots)
    right = dict(processor(text=list(PROMPTS[:2]), images=images[:2], return_tensors="pt", padding=True,
                           padding_side="right"))
    with pytest.raises(ValueError, match="left padding only"):
        split_batch(right["pixel_values"], right["input_ids"], right["image_embeds_position_mask"],
                    right["attention_mask"], 1)
    with pytest.raises(ValueError, match="image_embeds_position_mask"):
        engine.generate(**{**inputs, "image_embeds_position_mask": slots[None, :-1]}, max_new_tokens=2)
    with pytest.raises(ValueError, match="streaming is not supported"):
        engine.run(engine.rows(**inputs), DecodingSettings(max_new_tokens=2, num_beams=2), streamer=TokenStreamer())
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(**inputs)
    with pytest.raises(ValueError, match="max_entries"):
        PrefixCache(0)
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(engine, max_batch_size=0)


def test_a_row_stream_ends_once():
    """After a cancel, late tokens and a late error from the worker change nothing."""
    stream = RowStream()
    stream.add(5, -0.5)
    stream.cancel()
    stream.add(6, -0.5)
    stream.finish(RuntimeError("late"))
    assert list(stream) == [5] and stream.result(timeout=1) == [5]


@pytest.mark.parametrize("decoding", [{}, {"do_sample": True}, {"num_beams": 2}], ids=["greedy", "sampling", "beam"])
def test_every_decoding_stops_after_the_step_at_which_it_is_asked_to(env, decoding):
    model, processor, _, images = env
    engine = Engine(model)
    asked = []
    settings = DecodingSettings(max_new_tokens=12, min_new_tokens=12, **decoding)  # (no end before the 12th)
    inputs = _batch(processor, images) if "num_beams" not in decoding else _inputs(processor, PROMPTS[0], images[0])
    out = engine.run(engine.rows(**inputs), settings, stop=lambda: asked.append(1) or len(asked) >= 3)
    assert len(asked) == 3 and out.sequences.shape[1] == 3
