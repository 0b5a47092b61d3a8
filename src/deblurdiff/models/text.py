"""The cached empty-prompt context.

DeblurDiff is trained and run text-free: every step is conditioned on the text encoder's output for the
empty prompt. We compute it once (when a preset is built from a base model) and save it with the
pipeline as a tiny component, so neither training nor inference loads the text encoder.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

__all__ = ["NullTextEmbedding", "encode_empty_prompt"]


class NullTextEmbedding(ModelMixin, ConfigMixin):
    """Holds the empty-prompt context (1, L, D) as a frozen buffer; ``forward(B)`` -> (B, L, D)."""

    @register_to_config
    def __init__(self, sequence_length: int = 77, embedding_dim: int = 1024):
        super().__init__()
        self.register_buffer("embedding", torch.zeros(1, sequence_length, embedding_dim))

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.embedding.expand(batch_size, -1, -1)

    @classmethod
    def from_tensor(cls, embedding: torch.Tensor) -> "NullTextEmbedding":
        """embedding: (1, L, D) or (L, D)."""
        embedding = embedding.reshape(1, *embedding.shape[-2:])
        module = cls(sequence_length=embedding.shape[1], embedding_dim=embedding.shape[2])
        module.embedding = embedding.detach().to(module.embedding.device, torch.float32).clone()
        return module


@torch.no_grad()
def encode_empty_prompt(base_model: str) -> torch.Tensor:
    """The empty prompt through a Stable Diffusion checkpoint's own tokenizer and text encoder.

    ``base_model``: diffusers layout with ``tokenizer/`` and ``text_encoder/`` (CLIP / OpenCLIP-H as
    CLIPTextModel; SD-2.x already truncates it to the penultimate layer). Returns (1, 77, D) float32.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base_model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base_model, subfolder="text_encoder").eval()
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0].float()
