"""``python -m kosmos2 train --data FILE --out DIR``: fine-tune on a label journal, a COCO file, referring
expressions or grounded text, fully or with LoRA adapters; ``torchrun --nproc-per-node N -m kosmos2 train``
trains in N processes. A rerun of the same command resumes from the last checkpoint."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch.distributed as dist

from ..config import Kosmos2Config, Kosmos2TextConfig
from ..demo.loading import DEFAULT_CHECKPOINT, progress
from ..demo.signals import StopRequested, stop_on_signals
from ..errors import UserError
from ..hub import MODEL_FILES, PROCESSOR_FILES, resolve_checkpoint
from ..lora import DECODER_PROJECTIONS, LoraSpec
from ..precision import resolve_dtype
from ..training import (
    FORMATS,
    LOSS_ON,
    Encoder,
    Example,
    ExampleError,
    Problem,
    Trainer,
    TrainSettings,
    World,
    check_output,
    read_examples,
    run_params,
)
from . import common

SHOWN_PROBLEMS = 10  # records left out that the summary names, one a line
LORA_LR, FULL_LR = 2e-4, 1e-5


def parser() -> common.OneLineParser:
    p = common.OneLineParser(
        prog=f"{common.program()} train",
        description="Fine-tune KOSMOS-2 on grounded examples (label journals, COCO, refexp or grounded JSONL). "
        "A rerun of the same command resumes from its last checkpoint.",
    )
    p.add_argument("--data", type=Path, required=True, help="the training file")
    p.add_argument("--format", choices=("auto", *FORMATS), default="auto", help="its format (default: detected)")
    p.add_argument("--images", type=Path, help="the folder its image paths are relative to (default: its folder)")
    p.add_argument("--val", type=Path, help="held-out examples (same format): loss and boxes found")
    p.add_argument(
        "--val-images", type=Path, help="the folder --val's image paths are relative to (default: its folder)"
    )
    p.add_argument("--out", type=Path, required=True, help="the folder to write (checkpoints, then the result)")
    p.add_argument(
        "--checkpoint",
        help="the model to start from: a folder or hub id (default: $KOSMOS2_CHECKPOINT or the hub model)",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="the weights' dtype (default float32)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when there is one)")
    lora = p.add_argument_group("LoRA (without --lora every weight trains)")
    lora.add_argument("--lora", type=int, metavar="R", help="train rank-R adapters instead; the model stays frozen")
    lora.add_argument("--lora-alpha", type=int, help="the adapters' scale numerator (default 2R)")
    lora.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the adapters' input (default 0.05)")
    lora.add_argument(
        "--lora-target",
        default=DECODER_PROJECTIONS,
        help="which layers: a regular expression over module names "
        "(default: the text decoder's attention and feed-forward projections)",
    )
    lora.add_argument(
        "--merge", action="store_true", help="also write the merged model (the adapter goes to OUT/adapter)"
    )
    run = p.add_argument_group("the run")
    run.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default 1)")
    run.add_argument("--steps", type=int, help="optimizer steps (instead of --epochs)")
    run.add_argument(
        "--lr", type=float, help=f"peak learning rate (default {LORA_LR:g} with LoRA, {FULL_LR:g} without)"
    )
    run.add_argument("--warmup", type=int, default=0, help="steps of linear warm-up, then a linear fall to 0")
    run.add_argument("--batch-size", type=int, default=4, help="examples per process and micro-batch (default 4)")
    run.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    run.add_argument("--seed", type=int, default=0, help="the example order and the adapters' start (default 0)")
    run.add_argument(
        "--loss-on",
        choices=LOSS_ON,
        default="all",
        help="all: every token from </image> on, "
        "as KOSMOS-2 was trained; answer: the answer only, not the prompt (default all)",
    )
    run.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's (default 0)")
    run.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: none; default 1)")
    run.add_argument("--gradient-checkpointing", action="store_true", help="less memory, about a third more time")
    run.add_argument("--save-every", type=int, default=100, help="a checkpoint every N steps (default 100; 0: none)")
    run.add_argument("--val-every", type=int, default=0, help="evaluate --val every N steps (default: at the end)")
    run.add_argument("--strict", action="store_true", help="refuse to start when any record cannot be used")
    return p


def settings_of(args: argparse.Namespace) -> TrainSettings:
    """The run's settings from the flags (:class:`~kosmos2.training.TrainError` for a bad value)."""
    lora = None
    if args.lora is not None:
        alpha = 2 * args.lora if args.lora_alpha is None else args.lora_alpha
        lora = LoraSpec(args.lora, alpha, args.lora_dropout, args.lora_target)
    elif args.merge:
        raise common.UsageError("--merge applies to --lora training")
    return TrainSettings(
        steps=args.steps,
        epochs=args.epochs,
        lr=args.lr if args.lr is not None else (LORA_LR if lora else FULL_LR),
        warmup=args.warmup,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seed=args.seed,
        loss_on=args.loss_on,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        save_every=args.save_every,
        val_every=args.val_every,
        gradient_checkpointing=args.gradient_checkpointing,
        lora=lora,
        merge=args.merge,
    )


def usable(
    path: Path, images: Path, fmt: str, encoder: Encoder, strict: bool, say: Callable[[str], None]
) -> list[Example]:
    """The data file's examples that the model can take; the others are reported with ``say`` (or, with
    ``strict``, refused)."""
    examples, problems = read_examples(path, images, fmt)
    kept = []
    for e in examples:
        try:
            encoder.check(e)
            kept.append(e)
        except ExampleError as error:
            problems.append(Problem(e.where, str(error).removeprefix(f"{e.where}: ")))
    if problems and strict:
        raise common.UsageError(
            f"{len(problems)} record(s) of {path} cannot be used (--strict), the first: {problems[0]}"
        )
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        say(f"leaving out {len(problems)} record(s) of {path} that cannot be used:\n{shown}{more}")
    if not kept:
        raise common.UsageError(f"{path} has no usable examples")
    return kept


def _positions(source: Path) -> int:
    """The checkpoint's longest sequence (an adapter folder has no config: the architecture's default)."""
    config = source / "config.json"
    if config.is_file():
        return Kosmos2Config.from_json_file(config).text_config.max_position_embeddings
    return Kosmos2TextConfig().max_position_embeddings


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kosmos2 train ...``; returns the exit status (2: a bad command, nothing written; 1: an error
    while training, the last checkpoint kept; 130 or 143 after Ctrl-C or SIGTERM, the last checkpoint kept)."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
        settings = settings_of(args)
        world = World.from_env(args.device)
        say = progress if world.main else (lambda _: None)
        checkpoint = args.checkpoint or os.environ.get("KOSMOS2_CHECKPOINT") or DEFAULT_CHECKPOINT
        source = resolve_checkpoint(checkpoint, (*MODEL_FILES, *PROCESSOR_FILES))
        base = str(source.resolve()) if Path(checkpoint).expanduser().is_dir() else checkpoint

        from ..model import Kosmos2ForConditionalGeneration
        from ..processing import Kosmos2Processor

        processor = Kosmos2Processor.from_pretrained(source)
        encoder = Encoder(processor, settings.loss_on, _positions(source))
        examples = usable(args.data, args.images or args.data.parent, args.format, encoder, args.strict, say)
        validation = []
        if args.val:
            validation = usable(args.val, args.val_images or args.val.parent, args.format, encoder, args.strict, say)
        dtype = resolve_dtype(args.dtype)
        if check_output(args.out, run_params(settings, base, examples, dtype, world.size)):
            say(f"{args.out} already holds this finished run: nothing to do")
            return 0
        held_out = f", {len(validation)} held out" if validation else ""
        say(f"{len(examples)} examples{held_out}; loading {checkpoint}")
        model = Kosmos2ForConditionalGeneration.from_pretrained(source, dtype=dtype, device=world.device)
        trainer = Trainer(model, processor, examples, settings, args.out, source, base, validation, world)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    resume = f"rerun the same command to resume from the last checkpoint in {args.out}"
    try:
        with stop_on_signals():
            result = trainer.train()
    except StopRequested as stop:
        say(f"stopped ({stop}); {resume}")
        return stop.exit_status
    except UserError as e:  # e.g. an image changed since it was checked
        print(f"error: {e}; {resume}", file=sys.stderr)
        return 1
    first, last = result.losses[0][1], result.losses[-1][1]
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    say(
        f"trained {result.steps} steps{resumed} in {result.seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s); "
        f"loss {first:.4f} -> {last:.4f}; wrote {args.out} (load it with --checkpoint {args.out})"
    )
    return 0
