"""Running the model for selfcheck, getting the checkpoint and its image, and the command itself."""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from PIL import Image

from ...errors import UserError
from ...hub import MODEL_FILES, PROCESSOR_FILES, HubUnreachable, resolve_checkpoint
from ...image_processing import open_image
from ...outputs import GenerateDecoderOnlyOutput
from ..common import OneLineParser, UsageError, program
from .compare import Produced, compare_case, json_entities, report
from .expectations import (
    ATOL,
    MAX_NEW_TOKENS,
    SCORE_SLICES,
    Case,
    cases_from,
    default_expectations,
    hub_sources,
    load_expectations,
    select_cases,
)

if TYPE_CHECKING:
    from ...model import Kosmos2ForConditionalGeneration

# --------------------------------------------------------------------------------------------------
# Running the model


@dataclass(frozen=True)
class Mode:
    """A way to load the weights: a dtype and optionally the int8 text decoder."""

    name: str
    dtype: torch.dtype
    quantize: str | None = None


MODES = {
    "float32": Mode("float32", torch.float32),
    "bfloat16": Mode("bfloat16", torch.bfloat16),
    "int8": Mode("int8", torch.float32, "int8"),  # float32 with the int8 text decoder, as KOSMOS2_QUANTIZE=int8
}


def jpeg_round_trip(image: Image.Image) -> Image.Image:
    """The integration test's preparation: ``image.save("new_image.jpg")`` with PIL's defaults, reopened."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    buffer.seek(0)
    reopened = Image.open(buffer)
    reopened.load()
    return reopened


def score_slices(scores: Sequence[torch.Tensor]) -> dict[str, list[list[float]]]:
    """The integration test's two slices: ``concat(scores[1:4])[:3, :3]`` and ``concat(scores[-3:])[-3:, -3:]``."""
    first = torch.cat(list(scores[1:4]))[:3, :3] if len(scores) > 1 else torch.empty(0, 0)
    last = torch.cat(list(scores[-3:]))[-3:, -3:]
    return {SCORE_SLICES[0]: first.float().cpu().tolist(), SCORE_SLICES[1]: last.float().cpu().tolist()}


def generate_rows(
    model: Kosmos2ForConditionalGeneration,
    processor: Any,
    case: Case,
    image: Image.Image,
    max_new_tokens: int = MAX_NEW_TOKENS,
    with_scores: bool = True,
) -> list[Produced]:
    """Run one case greedily as the recorded runs did; with ``with_scores``, the score slices for an
    unbatched case that recorded them (``generate``'s processed scores, as the reference test reads them)."""
    text = list(case.prompts) if case.batched else case.prompts[0]
    images = [image] * len(case.prompts) if case.batched else image
    inputs = processor(text=text, images=images, return_tensors="pt", padding=True, padding_side="left")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    want_scores = with_scores and not case.batched and any(k in SCORE_SLICES for k in case.expected[0])
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, output_scores=want_scores, return_dict_in_generate=True
    )
    out = cast(GenerateDecoderOnlyOutput, out)  # greedy, with return_dict_in_generate
    scores = list(out.scores) if want_scores and out.scores is not None else None
    pad = model.generation_config.pad_token_id  # what generate fills the rows that ended early with
    return _rows(processor, out.sequences.cpu(), inputs["input_ids"].shape[1], scores, pad)


def _rows(
    processor: Any, sequences: torch.Tensor, prompt_width: int, scores: list[torch.Tensor] | None, pad_id: int | None
) -> list[Produced]:
    rows = []
    for seq, text in zip(sequences.tolist(), processor.batch_decode(sequences, skip_special_tokens=True)):
        new = seq[prompt_width:]
        while new and new[-1] == pad_id:  # rows that ended early are filled with padding
            new.pop()
        caption, entities = processor.post_process_generation(text)
        rows.append(
            Produced(
                seq,
                new,
                processor.post_process_generation(text, cleanup_and_extract=False),
                caption,
                json_entities(entities),
                score_slices(scores) if scores is not None else {},
            )
        )
    return rows


@dataclass(frozen=True)
class ModeRun:
    """One mode's rows per case, and how long loading and generating took."""

    mode: Mode
    rows: list[list[Produced]]
    load_seconds: float
    run_seconds: float

    def timing(self) -> str:
        """``float32: loaded in 4.7 s; 1234 new tokens in 312 s (3.96 tokens/s, prompts and images included)``."""
        tokens = sum(len(r.new_ids) for rows in self.rows for r in rows)
        rate = f"{tokens / self.run_seconds:.3g}" if self.run_seconds > 0 else "-"
        return (
            f"{self.mode.name}: loaded in {self.load_seconds:.1f} s; {tokens} new tokens in "
            f"{self.run_seconds:.1f} s ({rate} tokens/s, prompts and images included)"
        )


def run_mode(
    folder: Path,
    mode: Mode,
    device: str,
    cases: Sequence[Case],
    images: Mapping[bool, Image.Image],
    processor: Any,
    log: Callable[[str], None],
) -> ModeRun:
    """Load the checkpoint in ``mode`` and run every case (the score slices in float32 only, the mode that
    is compared with the record); the model is freed afterwards."""
    from ...model import Kosmos2ForConditionalGeneration

    log(f"{mode.name}: loading {folder}")
    start = time.perf_counter()
    model = Kosmos2ForConditionalGeneration.from_pretrained(
        folder, dtype=mode.dtype, device=device, quantize=mode.quantize
    )
    loaded = time.perf_counter()
    try:
        rows = []
        for i, case in enumerate(cases, start=1):
            log(f"{mode.name}: {case.name} ({i}/{len(cases)})")
            rows.append(generate_rows(model, processor, case, images[case.jpeg], with_scores=mode.name == "float32"))
        return ModeRun(mode, rows, loaded - start, time.perf_counter() - loaded)
    finally:
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Getting the checkpoint and the image


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Hide huggingface_hub's retry warnings while it tries an unreachable hub (the outcome is reported
    once, by the caller); its progress bars stay."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _hub_unavailable(what: str) -> HubUnreachable:
    return HubUnreachable(
        f"selfcheck needs the Hugging Face hub for {what}, and it cannot be reached (offline, or HF_HUB_OFFLINE=1) "
        "with no copy in the local cache: run it where the hub is reachable, or pass --checkpoint FOLDER and "
        "--image FILE"
    )


def fetch_image(path: str | None, repo: str, filename: str) -> Image.Image:
    """``path`` opened, or ``filename`` downloaded from the model repository ``repo``."""
    if path is None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        try:
            with _quiet_hub():
                path = hf_hub_download(repo, filename)
        except LocalEntryNotFoundError as e:
            raise _hub_unavailable(f"{filename} of {repo}") from e
        except (EntryNotFoundError, RepositoryNotFoundError) as e:
            raise UsageError(f"cannot get {filename} from {repo}: {e}") from e
    return open_image(path)


def fetch_checkpoint(checkpoint: str) -> Path:
    """A local folder with the checkpoint's model and processor files (downloaded if it is a hub id)."""
    try:
        with _quiet_hub():
            return resolve_checkpoint(checkpoint, (*MODEL_FILES, *PROCESSOR_FILES))
    except HubUnreachable as e:
        raise _hub_unavailable(checkpoint) from e


# --------------------------------------------------------------------------------------------------
# The command


def parser() -> argparse.ArgumentParser:
    """The ``selfcheck`` arguments."""
    p = OneLineParser(
        prog=f"{program()} selfcheck",
        description="Check this implementation on the real checkpoint against its recorded outputs "
        "on snowman.png (transformers integration test and model card).",
    )
    p.add_argument(
        "--checkpoint",
        help="checkpoint folder or hub id (default: the expectations' checkpoint, microsoft/kosmos-2-patch14-224)",
    )
    p.add_argument("--image", help="the snowman image file (default: snowman.png from the model repository)")
    p.add_argument(
        "--expectations",
        default=None,
        help="recorded outputs, JSON (default: the packaged kosmos2/expectations/snowman.json)",
    )
    p.add_argument(
        "--modes",
        default=None,
        help="comma-separated, float32 first: float32,bfloat16,int8 (default; int8 only on a CPU)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--atol", type=float, default=ATOL, help=f"tolerance of the score slices (default {ATOL:g})")
    return p


def parse_modes(text: str | None, device: str) -> list[Mode]:
    """The modes to run: float32 first (the others are compared with it); int8 only on a CPU."""
    if text is None:
        names = ["float32", "bfloat16", "int8"] if device == "cpu" else ["float32", "bfloat16"]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown:
        raise UsageError(f"unknown mode {', '.join(map(repr, unknown))}; choose from {', '.join(MODES)}")
    if not names or names[0] != "float32" or len(set(names)) != len(names):
        raise UsageError("--modes must start with float32 and name each mode once")
    if "int8" in names and device != "cpu":
        raise UsageError("the int8 mode runs on a CPU only (--device cpu)")
    return [MODES[n] for n in names]


def _device(text: str | None) -> str:
    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {text!r}")
    if text == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return text


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when float32 matches every recorded output, 1 when not, 2 when it cannot run."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser().parse_args(argv)
        if not args.atol >= 0:
            raise UsageError(f"--atol must be >= 0, got {args.atol}")
        device = _device(args.device)
        modes = parse_modes(args.modes, device)
        data = load_expectations(args.expectations or default_expectations())
        cases = select_cases(cases_from(data), args.cases)
        checkpoint, image_repo, image_file = hub_sources(data)
        png = fetch_image(args.image, image_repo, image_file)
        folder = fetch_checkpoint(args.checkpoint or checkpoint)
        from ...processing import Kosmos2Processor

        processor = Kosmos2Processor.from_pretrained(folder)
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    images = {False: png, True: jpeg_round_trip(png)}
    runs = [run_mode(folder, m, device, cases, images, processor, log) for m in modes]
    results = {run.mode.name: run.rows for run in runs}
    problems = [compare_case(c, rows, args.atol) for c, rows in zip(cases, results["float32"])]
    print(
        f"selfcheck: {args.checkpoint or checkpoint} on {args.image or image_file}, "
        f"{len(cases)} cases, greedy, {MAX_NEW_TOKENS} new tokens, on {device} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)"
    )
    print(report(cases, results, problems))
    print("")
    print("\n".join(run.timing() for run in runs))
    if "int8" in results:
        print("int8: float32 with the experimental int8 text decoder and LM head (KOSMOS2_QUANTIZE=int8)")
    return 1 if any(problems) else 0


if __name__ == "__main__":
    sys.exit(main())
