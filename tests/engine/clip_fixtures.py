"""Tiny random CLIP text encoders and the real CLIP tokenizer, for text-conditioning tests.

The encoders keep the real vocabulary (49408) and 77 positions so real token ids go through them;
everything else is small. The tokenizer is farm.engine.tokenizer's (built offline from
open_clip's vocabulary file), so tests tokenise exactly as workers do.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from farm.engine.tokenizer import clip_tokenizer
from farm.engine.types import TextEncoders

VOCAB, POSITIONS = 49408, 77
L_WIDTH, G_WIDTH, H_WIDTH, G_PROJECTION = 32, 64, 48, 40


def tokenizer():
    return clip_tokenizer()


def tiny_encoder(seed: int, hidden: int, layers: int = 3, projection: int | None = None):
    """A random CLIP text model; with `projection`, a CLIPTextModelWithProjection (SDXL's G)."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=POSITIONS,
                            hidden_act="quick_gelu", projection_dim=projection or hidden)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    with torch.no_grad():
        # Away from the constructor's init (ones/zeros in the norms), so a skipped LayerNorm shows.
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape) * 0.05)
    return model.eval().requires_grad_(False)


def text_encoders(family: str, layer: int | None = None) -> TextEncoders:
    """CLIP for a family: sd1 {l}, sd2 {h}, sdxl {l, g}, sdxl_refiner {g}."""
    encoders = {
        "sd1": lambda: {"l": tiny_encoder(1, L_WIDTH)},
        "sd2": lambda: {"h": tiny_encoder(2, H_WIDTH, projection=H_WIDTH)},
        "sdxl": lambda: {"l": tiny_encoder(1, L_WIDTH), "g": tiny_encoder(3, G_WIDTH, projection=G_PROJECTION)},
        "sdxl_refiner": lambda: {"g": tiny_encoder(3, G_WIDTH, projection=G_PROJECTION)},
    }[family]()
    return TextEncoders(family=family, encoders=encoders, tokenizer=tokenizer(), key=("tiny", family), layer=layer)
