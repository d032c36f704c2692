"""LoRA adapters on the model's linear layers, saved and read in peft's file layout.

A wrapped layer computes ``base(x) + B(A(dropout(x))) * alpha / r`` with ``A`` (r, in) and ``B`` (out, r) in
float32, ``B`` starting at zero, so a fresh adapter changes nothing. The base layer is frozen. Module names
follow peft (``q_proj.base_layer``, ``q_proj.lora_A``, ``q_proj.lora_B``) and the saved keys are peft's
(``base_model.model.<module>.lora_A.weight``), so ``PeftModel.from_pretrained`` on transformers' model reads
what :func:`save_adapter` writes, and :func:`load_adapter` reads what peft writes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# The text decoder's attention and feed-forward projections (peft matches a string with re.fullmatch).
DECODER_PROJECTIONS = r"text_model\.model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|ffn\.(fc1|fc2))"


class AdapterError(UserError, ValueError):
    """An adapter that cannot be added or read: no layer matches, or the files do not fit the model."""


@dataclass(frozen=True)
class LoraSpec:
    """Which layers get an adapter (``target_modules``: a regular expression over module names, matched
    whole) and its rank, scale (``lora_alpha / r``) and input dropout."""

    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str = DECODER_PROJECTIONS

    def __post_init__(self) -> None:
        if self.r < 1:
            raise AdapterError(f"the LoRA rank must be at least 1, got {self.r}")
        if self.lora_alpha <= 0:
            raise AdapterError(
                f"the LoRA alpha must be positive (the update is scaled by alpha / r), got {self.lora_alpha}"
            )
        if not 0 <= self.lora_dropout < 1:
            raise AdapterError(f"the LoRA dropout must be in [0, 1), got {self.lora_dropout}")
        try:
            re.compile(self.target_modules)
        except re.error as e:
            raise AdapterError(
                f"the LoRA target pattern {self.target_modules!r} is not a regular expression ({e})"
            ) from e

    @property
    def scaling(self) -> float:
        """What the low-rank update is multiplied by: ``lora_alpha / r``."""
        return self.lora_alpha / self.r


class LoraLinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, spec: LoraSpec) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, spec.r, bias=False, device=base.weight.device, dtype=torch.float32)
        self.lora_B = nn.Linear(spec.r, base.out_features, bias=False, device=base.weight.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = spec.lora_dropout
        self.scaling = spec.scaling
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(x.float(), self.dropout, self.training)
        return self.base_layer(x) + (self.lora_B(self.lora_A(h)) * self.scaling).to(x.dtype)

    def merged(self) -> nn.Linear:
        """The base layer with the update added into its weight (nothing left to compute at inference)."""
        base = self.base_layer
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, in), float32
        with torch.no_grad():
            base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
        return base


def _targets(model: nn.Module, pattern: str) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, name)]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Freeze every parameter of ``model`` and wrap each linear layer whose name matches the spec's pattern
    with a :class:`LoraLinear`; returns the wrapped names. :class:`AdapterError` when none matches."""
    names = _targets(model, spec.target_modules)
    if not names:
        raise AdapterError(f"no linear layer of the model matches the LoRA target pattern {spec.target_modules!r}")
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    tied = [n for n in names if counts[id(model.get_submodule(n).weight)] > 1]
    if tied:
        raise AdapterError(f"{tied[0]} shares its weight with another layer (tied); leave it out of the LoRA targets")
    model.requires_grad_(False)
    for name in names:
        _replace(model, name, LoraLinear(cast(nn.Linear, model.get_submodule(name)), spec))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """The model's adapters by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base layer and put the plain layer back (the result saves and loads
    as an ordinary checkpoint)."""
    for name, layer in lora_layers(model).items():
        _replace(model, name, layer.merged())


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights under peft's key names."""
    return {
        f"{PEFT_PREFIX}{name}.{part}.weight": getattr(layer, part).weight.detach().contiguous()
        for name, layer in lora_layers(model).items()
        for part in ("lora_A", "lora_B")
    }


def save_adapter(model: nn.Module, spec: LoraSpec, folder: Path, base_model: str) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (peft's layout) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        **asdict(spec),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(adapter_state_dict(model), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def read_adapter_config(folder: Path) -> tuple[LoraSpec, str | None]:
    """The spec and base model named by ``folder``'s ``adapter_config.json``; :class:`AdapterError` for an
    adapter this project cannot apply (not LoRA, DoRA, rsLoRA, biases, per-layer ranks)."""
    data = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    unsupported = [
        key
        for key, plain in (("peft_type", "LORA"), ("bias", "none"), ("use_dora", False), ("use_rslora", False))
        if data.get(key, plain) != plain
    ]
    unsupported += [key for key in ("rank_pattern", "alpha_pattern", "modules_to_save") if data.get(key)]
    if unsupported:
        raise AdapterError(f"{folder / ADAPTER_CONFIG}: cannot apply an adapter with {', '.join(unsupported)}")
    targets = data.get("target_modules")
    if isinstance(targets, list):  # peft also takes module-name suffixes
        targets = r"(.*\.)?(" + "|".join(re.escape(t) for t in targets) + ")"
    if not isinstance(targets, str):
        raise AdapterError(f"{folder / ADAPTER_CONFIG}: target_modules must be a pattern or a list of names")
    spec = LoraSpec(int(data["r"]), int(data.get("lora_alpha", 8)), float(data.get("lora_dropout", 0.0)), targets)
    return spec, data.get("base_model_name_or_path")


def load_adapter(model: nn.Module, folder: Path) -> LoraSpec:
    """Add the adapter saved in ``folder`` (by :func:`save_adapter` or peft) to ``model``, with its weights;
    :class:`AdapterError` when its layers or shapes do not fit."""
    spec, _ = read_adapter_config(folder)
    add_lora(model, spec)
    tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    tensors = {re.sub(r"\.(lora_[AB])\.default\.", r".\1.", k): v for k, v in tensors.items()}
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"{folder / ADAPTER_WEIGHTS} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise AdapterError(f"{key}: shape {tuple(value.shape)} in the file, {tuple(expected[key].shape)} expected")
        expected[key].copy_(value)
    return spec
