"""KOSMOS-2: vision encoder + image-to-text projection + text decoder, with checkpoint loading.

Module and parameter names equal the checkpoint's state-dict names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention
from .cache import KVCache
from .config import Kosmos2Config
from .generation import GenerationConfig, compute_transition_scores, generate
from .hub import MODEL_FILES, CheckpointError, require_files, resolve_checkpoint
from .language import Kosmos2TextForCausalLM, Kosmos2TextModel
from .layers import Linear
from .lora import ADAPTER_CONFIG, load_adapter, merge_lora, read_adapter_config
from .outputs import (
    Kosmos2ForConditionalGenerationModelOutput,
    Kosmos2ModelOutput,
    TextModelOutput,
    VisionModelOutput,
)
from .precision import check_quantize, resolve_dtype
from .quantize import quantize_int8
from .vision import Kosmos2VisionModel
from .weights import load_weights, read_weights


class Kosmos2ImageToTextProjection(nn.Module):
    """Turns the 1+P vision tokens into ``latent_query_num`` text-width image embeddings.

    The learned latent queries attend (one multi-head attention, no mask) over
    [dense(vision tokens); latent queries]; the attention output is the result.
    """

    def __init__(self, config: Kosmos2Config) -> None:
        super().__init__()
        d = config.text_config.embed_dim
        self.dense = Linear(config.vision_config.hidden_size, d)
        self.latent_query = nn.Parameter(torch.empty(config.latent_query_num, d))
        self.x_attn = MultiHeadAttention(
            d, config.text_config.attention_heads, dropout=config.text_config.attention_dropout
        )

    def forward(self, features: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 1+P, h) -> (B, Q, D) image embeddings and, if asked, (B, heads, Q, 1+P+Q) weights."""
        hidden = self.dense(features)  # (B, 1+P, D)
        queries = self.latent_query.unsqueeze(0).expand(hidden.shape[0], -1, -1)  # (B, Q, D)
        context = torch.cat([hidden, queries], dim=1)
        return self.x_attn(queries, context=context, need_weights=need_weights)


class _Kosmos2Base(nn.Module):
    """What both public classes share: the three parts, image features, the common forward, loading."""

    text_model: Kosmos2TextModel
    _text_class: type[Kosmos2TextModel] = Kosmos2TextModel

    def __init__(self, config: Kosmos2Config) -> None:
        super().__init__()
        self.config = config
        self.text_model = self._text_class(config.text_config)
        self.vision_model = Kosmos2VisionModel(config.vision_config)
        self.image_to_text_projection = Kosmos2ImageToTextProjection(config)
        self.generation_config = GenerationConfig.from_text_config(config.text_config)

    @property
    def dtype(self) -> torch.dtype:
        return self.image_to_text_projection.latent_query.dtype

    @property
    def device(self) -> torch.device:
        return self.image_to_text_projection.latent_query.device

    def gradient_checkpointing_enable(self) -> None:
        """In training, recompute each vision and decoder block's activations during the backward pass
        instead of keeping them: less memory for about one more forward's time."""
        self._set_gradient_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        """Keep the activations again (the default)."""
        self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, on: bool) -> None:
        self.text_model.model.gradient_checkpointing = on
        self.vision_model.model.gradient_checkpointing = on

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether :meth:`gradient_checkpointing_enable` is in effect."""
        return self.text_model.model.gradient_checkpointing

    def get_image_features(
        self, pixel_values: torch.Tensor, output_attentions: bool = False, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, VisionModelOutput]:
        """Image embeddings (B, latent_query_num, embed_dim), projection attention weights (if asked) and
        the vision encoder's output.

        All 1+P vision tokens go through ``post_layernorm`` and are L2-normalised before the projection.
        """
        vision = self.vision_model(pixel_values, output_attentions, output_hidden_states)
        features = F.normalize(self.vision_model.model.post_layernorm(vision.last_hidden_state), dim=-1)
        image_embeds, projection_attentions = self.image_to_text_projection(features, need_weights=output_attentions)
        return image_embeds, projection_attentions, vision

    def _forward_parts(
        self,
        *,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        image_embeds_position_mask: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        head_mask: torch.Tensor | None,
        past_key_values: KVCache | None,
        image_embeds: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        use_cache: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
    ) -> dict[str, Any]:
        projection_attentions = vision_output = None
        image_needed = not (isinstance(past_key_values, KVCache) and past_key_values.length > 0)
        if image_embeds is None and image_needed:
            if pixel_values is None:
                raise ValueError("pass pixel_values or image_embeds")
            image_embeds, projection_attentions, vision_output = self.get_image_features(
                pixel_values, bool(output_attentions), bool(output_hidden_states)
            )
        elif image_embeds is not None:
            expected = (self.config.latent_query_num, self.config.text_config.embed_dim)
            if image_embeds.ndim != 3 or tuple(image_embeds.shape[1:]) != expected:
                raise ValueError(
                    f"image_embeds must have shape (batch, {expected[0]}, {expected[1]}), "
                    f"got {tuple(image_embeds.shape)}"
                )
        text: TextModelOutput = self.text_model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_embeds=image_embeds,
            image_embeds_position_mask=image_embeds_position_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            head_mask=head_mask,
            use_cache=self.config.text_config.use_cache if use_cache is None else use_cache,
            output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states),
        )
        return dict(
            last_hidden_state=text.last_hidden_state,
            past_key_values=text.past_key_values,
            hidden_states=text.hidden_states,
            attentions=text.attentions,
            image_embeds=image_embeds,
            projection_attentions=projection_attentions,
            vision_model_output=vision_output,
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        quantize: str | None = None,
    ):
        """Load a checkpoint folder or hub repository (safetensors only; single file or sharded), or a LoRA
        adapter folder (peft's layout), merged into the base model its ``adapter_config.json`` names.

        The model is built on the meta device and each tensor is converted to ``dtype`` (default
        float32) as it is read, then placed on ``device`` (default CPU). ``quantize="int8"`` then gives
        the text decoder int8 weights (experimental, CPU only; see ``kosmos2.quantize``). Raises
        ``CheckpointError`` for a missing/incomplete checkpoint or weights whose names or shapes do not
        match.
        """
        check_quantize(quantize, device or "cpu")
        folder = resolve_checkpoint(path_or_repo_id, MODEL_FILES, revision, local_files_only)
        if (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
            model = cls._base_of_adapter(folder, dtype, device, local_files_only)
            load_adapter(model, folder)
            merge_lora(model)
        else:
            model = cls._from_folder(folder, dtype, device)
        if quantize is not None:
            quantize_int8(model)
        return model.eval()

    @classmethod
    def _from_folder(cls, folder: Path, dtype: torch.dtype | str | None, device: torch.device | str | None):
        require_files(folder, ["config.json"], "The KOSMOS-2 checkpoint")
        config = Kosmos2Config.from_json_file(folder / "config.json")
        tensors = read_weights(folder, resolve_dtype(dtype), device or "cpu")
        with torch.device("meta"):
            model = cls(config)
        load_weights(model, tensors, str(folder))
        if isinstance(model.text_model, Kosmos2TextForCausalLM):
            model.text_model.tie_weights()
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_json_file(folder / "generation_config.json")
        return model

    @classmethod
    def _base_of_adapter(
        cls,
        folder: Path,
        dtype: torch.dtype | str | None,
        device: torch.device | str | None,
        local_files_only: bool | None,
    ):
        _, base = read_adapter_config(folder)
        if not base:
            raise CheckpointError(f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
        return cls.from_pretrained(base, dtype, device, None, local_files_only)  # the revision is the adapter's


class Kosmos2Model(_Kosmos2Base):
    """KOSMOS-2 without the language-model head: returns the decoder's last hidden state."""

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        image_embeds: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Kosmos2ModelOutput | tuple:
        """Encode the image (unless ``image_embeds`` or a filled cache is given) and run the decoder."""
        out = Kosmos2ModelOutput(
            **self._forward_parts(
                pixel_values=pixel_values,
                input_ids=input_ids,
                image_embeds_position_mask=image_embeds_position_mask,
                attention_mask=attention_mask,
                head_mask=head_mask,
                past_key_values=past_key_values,
                image_embeds=image_embeds,
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                use_cache=use_cache,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        )
        return out if return_dict is None or return_dict else out.to_tuple()


class Kosmos2ForConditionalGeneration(_Kosmos2Base):
    """KOSMOS-2 with the (tied) language-model head: logits, loss and ``generate``."""

    text_model: Kosmos2TextForCausalLM
    _text_class = Kosmos2TextForCausalLM

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        image_embeds: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Kosmos2ForConditionalGenerationModelOutput | tuple:
        """Like ``Kosmos2Model.forward`` plus logits; with ``labels`` (-100 = ignored) the mean next-token
        cross-entropy (computed in float32; the cache is then off)."""
        if labels is not None:
            use_cache = False
        parts = self._forward_parts(
            pixel_values=pixel_values,
            input_ids=input_ids,
            image_embeds_position_mask=image_embeds_position_mask,
            attention_mask=attention_mask,
            head_mask=head_mask,
            past_key_values=past_key_values,
            image_embeds=image_embeds,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.text_model.lm_head(parts.pop("last_hidden_state"))  # (B, T, V)
        loss = next_token_loss(logits, labels) if labels is not None else None
        out = Kosmos2ForConditionalGenerationModelOutput(loss=loss, logits=logits, **parts)
        return out if return_dict is None or return_dict else out.to_tuple()

    def next_token_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: KVCache | None = None,
        image_embeds: torch.Tensor | None = None,
        image_embeds_position_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, V) float32 logits for the token after the (N, new) ``input_ids``: the text decoder over
        ``cache`` (extended in place; None: no cache), with ``image_embeds`` spliced in at
        ``image_embeds_position_mask`` where given. Every decoding path (``generate``, the serving engine)
        gets its logits here."""
        hidden = self.text_model.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_embeds=image_embeds,
            image_embeds_position_mask=image_embeds_position_mask,
            past_key_values=cache,
            position_ids=position_ids,
            use_cache=cache is not None,
        ).last_hidden_state
        return self.text_model.lm_head(hidden[:, -1]).float()

    generate = generate

    compute_transition_scores = staticmethod(compute_transition_scores)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of position t's logits against label t+1, skipping labels equal to -100: the mean over
    the labels counted, or (``reduction="sum"``) their sum."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:]
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten().to(logits.device), ignore_index=-100, reduction=reduction
    )
