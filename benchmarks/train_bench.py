"""One LoRA training step, ours against the reference (transformers + peft), on the full-size random
checkpoint: seconds per optimizer step, load time and peak memory, each implementation in its own process.

    python -m benchmarks.train_bench --size tiny --steps 3                 # smoke run
    python -m benchmarks.train_bench --dtypes float32,bfloat16              # the fine-tuning page's numbers
    python -m benchmarks.train_bench --gradient-checkpointing               # the same with recomputation

Both train rank-8 adapters on the text decoder's projections (``kosmos2.lora.DECODER_PROJECTIONS``) with
AdamW on the same batch: ``--batch-size`` copies of one example (an image, a 10-token prompt and a 20-token
grounded answer, ~100 tokens with the image's slots), the loss on every token from ``</image>`` on. The step
time is the median of ``--steps`` steps after one warm-up step. Prints a table and the machine line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.run import ensure_checkpoint, machine
from benchmarks.worker import test_image

CACHE = Path(__file__).resolve().parent / "cache"
IMPLS = ("ours", "reference")
PROMPT = "<grounding> An image of"
ANSWER = (
    "<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object> warming himself by"
    "<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
)


def _batch(folder: Path, size: int) -> dict[str, torch.Tensor]:
    from kosmos2 import Kosmos2Processor
    from kosmos2.training import Encoder, Example, collate

    processor = Kosmos2Processor.from_pretrained(folder)
    row = Encoder(processor).encode(Example(Path("x.png"), PROMPT, ANSWER, "bench"), test_image())
    return collate([row] * size, processor.tokenizer.pad_token_id)


def _model(impl: str, folder: Path, dtype: torch.dtype, checkpointing: bool) -> torch.nn.Module:
    from kosmos2.lora import DECODER_PROJECTIONS, LoraSpec, add_lora

    spec = LoraSpec(r=8, lora_alpha=16, lora_dropout=0.05)
    if impl == "ours":
        from kosmos2 import Kosmos2ForConditionalGeneration

        model = Kosmos2ForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        add_lora(model, spec)
        if checkpointing:
            model.gradient_checkpointing_enable()
        return model
    import transformers
    from peft import LoraConfig, get_peft_model

    model = transformers.Kosmos2ForConditionalGeneration.from_pretrained(folder, dtype=dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=spec.r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout, target_modules=DECODER_PROJECTIONS)
    return get_peft_model(model, config)


def measure(impl: str, folder: Path, dtype_name: str, batch_size: int, steps: int, checkpointing: bool) -> dict:
    """Load, then time LoRA steps (forward with labels, backward, AdamW); peak RSS in GB."""
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    batch = _batch(folder, batch_size)
    start = time.perf_counter()
    model = _model(impl, folder, dtype, checkpointing)
    load = time.perf_counter() - start
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    times, losses = [], []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    return {
        "load_s": load,
        "step_s": statistics.median(times[1:]),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "trainable_m": sum(p.numel() for p in trainable) / 1e6,
        "tokens": int(batch["attention_mask"].sum()),
        "first_loss": losses[0],
    }


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "full"), default="full")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    folder = ensure_checkpoint(args.cache, args.size)
    if args.worker:
        result = measure(args.worker, folder, args.dtype, args.batch_size, args.steps, args.gradient_checkpointing)
        print(json.dumps(result))
        return ""
    lines = [
        f"LoRA r=8 training step, batch {args.batch_size}, {args.size} checkpoint"
        + (", gradient checkpointing" if args.gradient_checkpointing else ""),
        "| dtype | metric | ours | reference (transformers + peft) | ours / reference |",
        "|---|---|---|---|---|",
    ]
    failed: dict[str, str] = {}
    for dtype in args.dtypes.split(","):
        results = {}
        for impl in IMPLS:
            command = [sys.executable, "-m", "benchmarks.train_bench", "--worker", impl, "--dtype", dtype]
            command += ["--size", args.size, "--cache", str(args.cache), "--batch-size", str(args.batch_size)]
            command += ["--steps", str(args.steps)] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode == 0:
                results[impl] = json.loads(done.stdout.strip().splitlines()[-1])
            elif impl == "reference":  # shown in the table: what the user of the reference would meet
                failed[dtype] = done.stderr.strip().splitlines()[-1]
            else:
                raise RuntimeError(f"our worker failed:\n{done.stderr}")
        for metric in ("step_s", "load_s", "peak_rss_gb", "first_loss"):
            ours = results["ours"][metric]
            if dtype in failed:
                lines.append(f"| {dtype} | {metric} | {ours:.4g} | failed: {failed[dtype]} | |")
                continue
            ref = results["reference"][metric]
            ratio = f"{ours / ref:.2f}" if metric != "first_loss" else "same batch"
            lines.append(f"| {dtype} | {metric} | {ours:.4g} | {ref:.4g} | {ratio} |")
    lines.append(f"tokens per step: {results['ours']['tokens']}; trainable: {results['ours']['trainable_m']:.1f} M")
    lines.append(f"machine: {machine()}")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
