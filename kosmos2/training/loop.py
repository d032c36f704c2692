"""The training loop: AdamW with warm-up, gradient accumulation, checkpoints a rerun resumes from, held-out
loss and box accuracy, and several processes through torchrun (DistributedDataParallel).

Every process sees the same example order (a permutation per epoch, from the seed); optimizer step ``s``
takes the next ``batch_size x grad_accum x processes`` examples of it, each process its own slices. The
loss is the sum over the whole step's labelled tokens divided by their count, so one process with batch
4 computes the same step as two with batch 2. A checkpoint holds the weights (a loadable model or
adapter), the optimizer and every process's random state, so a resumed run continues as the
uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..errors import UserError
from ..hub import PROCESSOR_FILES
from ..lora import ADAPTER_WEIGHTS, LoraSpec, adapter_state_dict, add_lora, merge_lora, save_adapter
from ..model import Kosmos2ForConditionalGeneration, next_token_loss
from ..processing import Kosmos2Processor
from ..runfile import changes, read_run
from .batches import LOSS_ON, Encoder, Row, collate
from .examples import Example
from .metrics import box_hits

RUN_FILE = "run.json"
SUMMARY_FILE = "train.json"
STATE_TENSORS = "trainer_state.safetensors"  # the optimizer's moments, every process's random state
STATE_FILE = "trainer_state.json"  # the rest, written last: a checkpoint without it is incomplete
_COPIED = (*PROCESSOR_FILES, "generation_config.json")
_TIED = "text_model.lm_head.weight"


class TrainError(UserError, ValueError):
    """Training cannot start or go on: bad settings, an output folder of another run, no examples."""


@dataclass(frozen=True)
class TrainSettings:
    """How to train. ``steps`` (optimizer steps) wins over ``epochs``; ``batch_size`` is per process, so a
    step sees ``batch_size x grad_accum x processes`` examples. The learning rate rises linearly over
    ``warmup`` steps, then falls linearly to zero. ``save_every`` / ``val_every``: every that many steps
    (0: at the end only). ``lora``: adapters on the layers it names, the rest frozen (None: every weight
    trains); ``merge`` then also writes the merged model."""

    steps: int | None = None
    epochs: float = 1.0
    lr: float = 2e-4
    warmup: int = 0
    batch_size: int = 4
    grad_accum: int = 1
    seed: int = 0
    loss_on: str = "all"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 0
    val_every: int = 0
    gradient_checkpointing: bool = False
    lora: LoraSpec | None = None
    merge: bool = False

    def __post_init__(self) -> None:
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum}
        if self.steps is not None:
            positive["steps"] = self.steps
        problems = [f"{k} must be at least 1, got {v}" for k, v in positive.items() if v < 1]
        if self.steps is None and not self.epochs > 0:
            problems.append(f"epochs must be positive, got {self.epochs}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        for name in ("warmup", "save_every", "val_every", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.loss_on not in LOSS_ON:
            problems.append(f"loss_on must be one of {', '.join(LOSS_ON)}, got {self.loss_on!r}")
        if self.merge and self.lora is None:
            problems.append("merge applies to LoRA training only")
        if problems:
            raise TrainError("; ".join(problems))


@dataclass
class TrainResult:
    """What a run did: its last step, the loss of every step (``(step, loss)``), each held-out evaluation
    (``(step, loss, hits, entities)``), its time and its speed."""

    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    validations: list[tuple[int, float, int, int]] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    resumed_from: int = 0


@dataclass(frozen=True)
class World:
    """This process's place among the ones torchrun started (one, without torchrun)."""

    rank: int
    size: int
    device: torch.device

    @classmethod
    def from_env(cls, device: str | torch.device | None = None) -> World:
        """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``): gloo on the
        CPU, NCCL on GPUs, each process on its own GPU."""
        size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's collectives use the current device
        if size > 1 and not dist.is_initialized():
            if device.type == "cuda":
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
        return cls(rank, size, device)

    @property
    def main(self) -> bool:
        """Whether this is the process that writes and prints."""
        return self.rank == 0

    def total(self, value: float) -> float:
        """``value`` summed over the processes."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order."""
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def wait(self) -> None:
        """Wait for every process to get here."""
        if self.size > 1:
            dist.barrier()


# --------------------------------------------------------------------------- the order of examples


class Order:
    """Which examples each process takes at each step: a seeded permutation per epoch, read in turn."""

    def __init__(self, count: int, settings: TrainSettings, world: World) -> None:
        self.count, self.seed = count, settings.seed
        self.batch, self.accum, self.world = settings.batch_size, settings.grad_accum, world
        self.per_step = self.batch * self.accum * world.size
        self._perms: dict[int, list[int]] = {}

    def total_steps(self, settings: TrainSettings) -> int:
        """Optimizer steps of the run: ``steps``, or ``epochs`` passes rounded up."""
        if settings.steps is not None:
            return settings.steps
        return max(1, math.ceil(settings.epochs * self.count / self.per_step))

    def _at(self, position: int) -> int:
        epoch, i = divmod(position, self.count)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms = {epoch: torch.randperm(self.count, generator=g).tolist()}
        return self._perms[epoch][i]

    def micro_batches(self, step: int) -> list[list[int]]:
        """This process's example indices for each micro-batch of ``step`` (0-based)."""
        start = step * self.per_step
        out = []
        for k in range(self.accum):
            first = start + (k * self.world.size + self.world.rank) * self.batch
            out.append([self._at(p) for p in range(first, first + self.batch)])
        return out


def learning_rate_factor(step: int, warmup: int, total: int) -> float:
    """The schedule: a linear rise over ``warmup`` steps, then a linear fall to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# --------------------------------------------------------------------------- saving


def _copy_files(source: Path, folder: Path, names: Sequence[str]) -> None:
    for name in names:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)


def save_model(model: Kosmos2ForConditionalGeneration, folder: Path, source: Path) -> None:
    """``model`` as a hub-layout checkpoint in ``folder``: its weights (the tied LM head once, as the
    embedding), and the source checkpoint's config and processor files."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != _TIED}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _copy_files(source, folder, _COPIED)
    if (source / "config.json").is_file():
        shutil.copyfile(source / "config.json", folder / "config.json")
    else:  # the source is an adapter: its base's architecture is the model's
        model.config.save(folder / "config.json")


def _save_weights(
    model: Kosmos2ForConditionalGeneration, folder: Path, source: Path, base: str, lora: LoraSpec | None
) -> None:
    if lora is None:
        save_model(model, folder, source)
    else:
        save_adapter(model, lora, folder, base)
        _copy_files(source, folder, _COPIED)


def _restore_weights(model: nn.Module, folder: Path, lora: LoraSpec | None) -> None:
    if lora is None:
        tensors = load_file(str(folder / "model.safetensors"), device=str(next(model.parameters()).device))
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected or set(missing) - {_TIED}:
            raise TrainError(f"{folder} does not hold this model's weights")
        return
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    with torch.no_grad():
        for key, target in adapter_state_dict(model).items():
            target.copy_(tensors[key])


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The checkpoint folders this loop writes in ``out`` (``checkpoint-<step>``), complete or not."""
    found = []
    for p in out.glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if step.isdigit() and p.is_dir():
            found.append((int(step), p))
    return found


def latest_checkpoint(out: Path) -> tuple[int, Path] | None:
    """The last complete checkpoint in ``out`` (its step and folder), if any."""
    found = [(step, p) for step, p in _checkpoints(out) if (p / STATE_FILE).is_file()]
    return max(found) if found else None


def _drop_checkpoints(out: Path, keep: Path | None = None) -> None:
    for _, p in _checkpoints(out):
        if p != keep:
            shutil.rmtree(p)
    for p in out.glob(".checkpoint-*.partial"):
        shutil.rmtree(p)


def fingerprint(examples: Sequence[Example]) -> str:
    """A hash of the examples, in order (a resumed run must train on the same data)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([str(e.image), e.prompt, e.answer]).encode())
    return h.hexdigest()[:16]


def run_params(
    settings: TrainSettings, base: str, examples: Sequence[Example], dtype: torch.dtype, processes: int
) -> dict[str, Any]:
    """What a run is (a rerun resumes only the same): the settings that change its result, the base model,
    its dtype, the examples and the number of processes (each step's examples depend on it)."""
    unchanged = ("save_every", "val_every", "gradient_checkpointing")  # the result does not depend on these
    kept = {k: v for k, v in asdict(settings).items() if k not in unchanged}
    dtype_name = str(dtype).removeprefix("torch.")
    return {**kept, "base": base, "dtype": dtype_name, "processes": processes, "examples": fingerprint(examples)}


def check_output(out: Path, run: dict[str, Any]) -> bool:
    """Whether ``out`` holds a finished run of ``run`` (True), is empty or an unfinished one (False);
    :class:`TrainError` when it holds anything else, so nothing of another run is overwritten."""
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out} is a file; --out names a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    params = out / RUN_FILE
    if not params.is_file():
        raise TrainError(f"{out} is not empty and holds no training run; use another --out")
    before = read_run(params, "use another --out, or delete it")
    if shown := changes(before, run):
        raise TrainError(f"{out} holds another training run ({shown}); use another --out, or delete it")
    return (out / SUMMARY_FILE).is_file()


# --------------------------------------------------------------------------- the run


class Trainer:
    """One training run of ``model`` (a :class:`Kosmos2ForConditionalGeneration`) on ``examples``, writing to
    ``out``; ``source`` is the checkpoint folder its config and processor files come from and ``base`` the
    name an adapter records as its base model."""

    def __init__(
        self,
        model: Kosmos2ForConditionalGeneration,
        processor: Kosmos2Processor,
        examples: Sequence[Example],
        settings: TrainSettings,
        out: Path,
        source: Path,
        base: str,
        validation: Sequence[Example] = (),
        world: World | None = None,
    ) -> None:
        if not examples:
            raise TrainError("no examples to train on")
        self.settings, self.out, self.source, self.base = settings, out, source, base
        self.world = world or World.from_env(model.device)
        self.examples, self.validation = list(examples), list(validation)
        self.encoder = Encoder(processor, settings.loss_on, model.config.text_config.max_position_embeddings)
        self.processor = processor
        self.order = Order(len(self.examples), settings, self.world)
        self.total = self.order.total_steps(settings)
        self.run = run_params(settings, base, self.examples, model.dtype, self.world.size)
        torch.manual_seed(settings.seed)  # the same fresh adapters in every process
        if settings.lora is not None:
            add_lora(model, settings.lora)
        torch.manual_seed(settings.seed + self.world.rank)  # then each process its own dropout masks
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.model = model
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: learning_rate_factor(s, settings.warmup, self.total)
        )
        self.net: nn.Module = model
        if self.world.size > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, find_unused_parameters=model.config.text_config.layerdrop > 0
            )

    # ---- one step

    def _rows(self, indices: list[int]) -> list[Row]:
        return [self.encoder.encode(self.examples[i]) for i in indices]

    def step(self, step: int) -> tuple[float, int]:
        """Run optimizer step ``step``; returns its mean loss per labelled token and its tokens (all processes)."""
        self.model.train()
        micro = [self._rows(indices) for indices in self.order.micro_batches(step)]
        targets = self.world.total(sum(r.targets for rows in micro for r in rows))
        tokens = self.world.total(sum(len(r.input_ids) for rows in micro for r in rows))
        loss_sum = 0.0
        pad = self.processor.tokenizer.pad_token_id
        for k, rows in enumerate(micro):
            batch = {key: v.to(self.world.device) for key, v in collate(rows, pad).items()}
            labels = batch.pop("labels")
            syncs = k == len(micro) - 1 or not isinstance(self.net, nn.parallel.DistributedDataParallel)
            with nullcontext() if syncs else self.net.no_sync():  # type: ignore[operator]  # DDP's context
                logits = self.net(**batch, use_cache=False).logits
                total = next_token_loss(logits, labels, reduction="sum")
                (total * self.world.size / targets).backward()
            loss_sum += float(total.detach())
        if self.settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.world.total(loss_sum) / targets, int(tokens)

    # ---- checkpoints

    def save_checkpoint(self, step: int, result: TrainResult) -> None:
        """Write ``checkpoint-<step>`` (weights, optimizer, every process's random state) whole, then drop
        the older ones."""
        rng = self.world.gather(_rng_state(self.world.device))
        if self.world.main:
            final = self.out / f"checkpoint-{step}"
            partial = self.out / f".checkpoint-{step}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            _save_weights(self.model, partial, self.source, self.base, self.settings.lora)
            _save_state(partial, step, self.optimizer, self.scheduler, rng, result)
            os.replace(partial, final)
            _drop_checkpoints(self.out, keep=final)
        self.world.wait()

    def resume(self) -> TrainResult:
        """Continue from the last checkpoint in ``out`` (a fresh result when there is none)."""
        found = latest_checkpoint(self.out)
        seen = self.world.gather(found[0] if found else 0)
        if len(set(seen)) > 1:
            raise TrainError(
                f"the processes see different checkpoints in {self.out} (steps {seen}): --out must be a folder "
                "every process shares"
            )
        if found is None:
            return TrainResult(steps=0)
        step, folder = found
        _restore_weights(self.model, folder, self.settings.lora)
        saved = _load_state(folder, self.optimizer, self.scheduler, self.world)
        return TrainResult(
            steps=step,
            losses=[tuple(x) for x in saved["losses"]],
            validations=[tuple(x) for x in saved["validations"]],
            resumed_from=step,
        )

    # ---- held-out evaluation

    @torch.no_grad()
    def evaluate(self) -> tuple[float, int, int]:
        """Held-out loss per labelled token, and the box hits and entities of greedy answers (this process's
        share of the held-out examples, summed over the processes)."""
        model = self.model.eval()
        pad = self.processor.tokenizer.pad_token_id
        loss_sum = targets = hits = entities = 0.0
        mine = self.validation[self.world.rank :: self.world.size]
        for first in range(0, len(mine), self.settings.batch_size):
            chunk = mine[first : first + self.settings.batch_size]
            rows = [self.encoder.encode(e) for e in chunk]
            batch = {k: v.to(self.world.device) for k, v in collate(rows, pad).items()}
            labels = batch.pop("labels")
            loss_sum += float(next_token_loss(model(**batch, use_cache=False).logits, labels, reduction="sum"))
            targets += sum(r.targets for r in rows)
            for example, row in zip(chunk, rows):
                h, n = self._answer_hits(example, row)
                hits, entities = hits + h, entities + n
        totals = [self.world.total(v) for v in (loss_sum, targets, hits, entities)]
        return totals[0] / max(totals[1], 1.0), int(totals[2]), int(totals[3])

    def _answer_hits(self, example: Example, row: Row) -> tuple[int, int]:
        prompt = self.encoder.prompt_length(example)
        device = self.world.device
        ids = torch.tensor([row.input_ids[:prompt]], device=device)
        answer_tokens = len(row.input_ids) - prompt
        generated = self.model.generate(
            pixel_values=row.pixel_values[None].to(device),
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            image_embeds_position_mask=torch.tensor([row.image_mask[:prompt]], device=device),
            max_new_tokens=answer_tokens + 8,
        )
        text = self.processor.decode(generated[0].tolist())
        return box_hits(example.text, text.split("</image>", 1)[-1], example.prompt)

    # ---- the whole run

    def train(self, progress: bool = True, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
        """Train to the last step (resuming from ``out``'s last checkpoint), write the result to ``out`` and
        return what was done. ``on_step(step, loss)`` hears of every step."""
        finished = check_output(self.out, self.run)
        if finished:
            raise TrainError(f"{self.out} already holds this finished run; use another --out to train again")
        if self.world.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / RUN_FILE).write_text(json.dumps(self.run, indent=2) + "\n", encoding="utf-8")
        self.world.wait()
        result = self.resume()
        bar = tqdm(total=self.total, initial=result.steps, unit="step", disable=not (progress and self.world.main))
        started, tokens_seen = time.perf_counter(), 0
        for step in range(result.steps, self.total):
            loss, tokens = self.step(step)
            tokens_seen += tokens
            result.steps = step + 1
            result.losses.append((step + 1, loss))
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_seen / elapsed:.0f}", refresh=False)
            bar.update()
            if on_step is not None:
                on_step(step + 1, loss)
            last = step + 1 == self.total
            if self.validation and (last or (self.settings.val_every and (step + 1) % self.settings.val_every == 0)):
                v_loss, hits, entities = self.evaluate()
                result.validations.append((step + 1, v_loss, hits, entities))
                if self.world.main and progress:
                    bar.write(f"step {step + 1}: held-out loss {v_loss:.4f}, boxes found {hits}/{entities}")
            if not last and self.settings.save_every and (step + 1) % self.settings.save_every == 0:
                self.save_checkpoint(step + 1, result)
        bar.close()
        result.seconds = time.perf_counter() - started
        result.tokens_per_second = tokens_seen / result.seconds if result.seconds > 0 else 0.0
        self._finish(result)
        return result

    def _finish(self, result: TrainResult) -> None:
        if self.world.main:
            lora = self.settings.lora
            if lora is not None and self.settings.merge:
                _save_weights(self.model, self.out / "adapter", self.source, self.base, lora)
                merge_lora(self.model)
                save_model(self.model, self.out, self.source)
            else:
                _save_weights(self.model, self.out, self.source, self.base, lora)
            summary = {**asdict(result), "settings": self.run}
            (self.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            _drop_checkpoints(self.out)
        self.world.wait()


def _save_state(
    folder: Path,
    step: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng: list[dict[str, torch.Tensor]],
    result: TrainResult,
) -> None:
    """The trainer's state as safetensors (tensors) and JSON (the rest); no pickle."""
    optim = optimizer.state_dict()
    tensors = {f"optimizer.{i}.{k}": v.contiguous() for i, s in optim["state"].items() for k, v in s.items()}
    tensors |= {f"rng.{rank}.{k}": v for rank, state in enumerate(rng) for k, v in state.items()}
    save_file(tensors, str(folder / STATE_TENSORS))
    rest = {
        "step": step,
        "param_groups": optim["param_groups"],
        "scheduler": scheduler.state_dict(),
        "result": asdict(result),
    }
    (folder / STATE_FILE).write_text(json.dumps(rest) + "\n", encoding="utf-8")


def _load_state(
    folder: Path, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, world: World
) -> dict[str, Any]:
    """Restore what :func:`_save_state` wrote (this process's random state among them); returns the saved
    result."""
    tensors = load_file(str(folder / STATE_TENSORS))
    rest = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        kind, index, name = key.split(".", 2)
        if kind == "optimizer":
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
    scheduler.load_state_dict(rest["scheduler"])
    prefix = f"rng.{world.rank}."
    _set_rng_state({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}, world.device)
    return rest["result"]


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state: the CPU generator's, and its GPU's (dropout draws there on a GPU)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
