"""Text conditioning as ComfyUI computes it: prompt weights, 77-token chunks, CLIP encoding, clip skip.

What is reproduced (spec execution.md §2.9), and why it matters for matching ComfyUI's images:
- Weights: `(text)` multiplies by 1.1 per level, `(text:w)` sets w, `\\(` / `\\)` are literal
  parentheses, and there is no `[text]` de-emphasis. Each weighted segment is tokenised on its
  own (BOS/EOS stripped), so token boundaries follow the weight syntax.
- Chunks: BOS + up to 75 tokens + EOS, padded to 77. A segment of fewer than 8 tokens that does
  not fit is moved whole to the next chunk; longer segments are split at the boundary.
- Encoding: every chunk of one encoder runs in one batch with the causal mask only (pad tokens
  are attended to, as in ComfyUI). When any weight differs from 1 an "empty" sequence joins the
  batch and weighted tokens become empty + w * (token - empty). The pooled vector comes from the
  first chunk, at its first EOS.
- Layers: SD1 takes the last layer after the final LayerNorm; SD2 the penultimate layer, also
  normalised (what the SD2 OpenCLIP embedder did and what ComfyUI's SD2 model does); SDXL (both
  encoders) and the SDXL refiner take the penultimate layer without the LayerNorm.
  CLIPSetLastLayer(-N) selects the output of layer N counted from the end, for every encoder; an
  N past the encoder's depth means its last layer.
- Encoders always compute in float32 (ComfyUI's manual cast of fp16 weights), whatever dtype the
  model cache keeps them in.

Not done: `embedding:name` textual inversions. The marker is tokenised as plain text; ComfyUI
would insert the embedding (or drop the marker with a warning when the file is missing).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from farm.engine.tokenizer import BOS, EOS
from farm.engine.tokenizer import MAX_LENGTH as CHUNK_LENGTH

# Segments shorter than this move whole to the next chunk instead of being split (ComfyUI's
# max_word_length), so short phrases are not cut in half at a chunk boundary.
MAX_WORD_LENGTH = 8
DEFAULT_WEIGHT = 1.0
EMPHASIS = 1.1
# Stand-ins for escaped parentheses while the weight syntax is parsed (private-use characters).
_LPAREN, _RPAREN = "\ue000", "\ue001"


@dataclasses.dataclass(frozen=True)
class EncoderRole:
    """How one text encoder of a family is used: its pad id and which hidden state it gives."""

    pad_id: int
    default_layer: int | None  # None: the last layer, after the final LayerNorm
    normalize_hidden: bool  # apply the final LayerNorm to an intermediate layer's output


_ROLES = {
    ("sd1", "l"): EncoderRole(EOS, None, True),
    ("sd2", "h"): EncoderRole(0, -2, True),
    ("sdxl", "l"): EncoderRole(EOS, -2, False),
    ("sdxl", "g"): EncoderRole(0, -2, False),
    ("sdxl_refiner", "g"): EncoderRole(0, -2, False),
}
# Which encoders make the cond of each family, concatenated on the feature axis in this order;
# the pooled vector comes from the last one (SDXL: G).
_FAMILY_ENCODERS = {"sd1": ("l",), "sd2": ("h",), "sdxl": ("l", "g"), "sdxl_refiner": ("g",)}

Chunk = list  # 77 (token id or None for padding, weight) pairs


# --- weights syntax ---------------------------------------------------------------------------

def parse_weights(text: str, weight: float = DEFAULT_WEIGHT) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments following ComfyUI's parentheses syntax."""
    escaped = text.replace("\\(", _LPAREN).replace("\\)", _RPAREN)
    return [(part.replace(_LPAREN, "(").replace(_RPAREN, ")"), w) for part, w in _weighted(escaped, weight)]


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    segments = []
    for piece in _top_level_pieces(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner, inner_weight = piece[1:-1], weight * EMPHASIS
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    # An explicit weight replaces the emphasis instead of multiplying it.
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            segments.extend(_weighted(inner, inner_weight))
        else:
            segments.append((piece, weight))
    return segments


def _top_level_pieces(text: str) -> list[str]:
    """Plain runs and top-level "(...)" groups. A stray ")" drives the depth below zero, so the
    parentheses after it are plain text until the depth is back to zero (as in ComfyUI)."""
    pieces, current, depth = [], "", 0
    for char in text:
        if char == "(" and depth == 0:
            if current:
                pieces.append(current)
            current, depth = "(", 1
        elif char == "(":
            current += char
            depth += 1
        elif char == ")":
            current += char
            depth -= 1
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


# --- tokens and chunks ------------------------------------------------------------------------

def tokenize(tokenizer, text: str) -> list[Chunk]:
    """The prompt as 77-token chunks of (id, weight); padding is None until an encoder picks its pad id."""
    segments = []
    for part, weight in parse_weights(text):
        # verbose=False: segments longer than 77 tokens are expected here; chunking handles them.
        ids = tokenizer(part, verbose=False)["input_ids"][1:-1]
        segments.append([(token, weight) for token in ids])
    return chunk_segments(segments)


def chunk_segments(segments: list[list[tuple[int, float]]]) -> list[Chunk]:
    """Pack weighted token segments into BOS + 75 + EOS chunks with the 8-token rule."""
    chunks, current = [], [(BOS, DEFAULT_WEIGHT)]
    for segment in segments:
        tokens = list(segment)
        splittable = len(tokens) >= MAX_WORD_LENGTH
        while tokens:
            room = CHUNK_LENGTH - 1 - len(current)  # places before the closing EOS
            if len(tokens) <= room:
                current.extend(tokens)
                break
            if splittable:
                current.extend(tokens[:room])
                tokens = tokens[room:]
            chunks.append(_close(current))
            current = [(BOS, DEFAULT_WEIGHT)]
    chunks.append(_close(current))
    return chunks


def _close(chunk: list) -> Chunk:
    chunk = chunk + [(EOS, DEFAULT_WEIGHT)]
    return chunk + [(None, DEFAULT_WEIGHT)] * (CHUNK_LENGTH - len(chunk))


def _empty_chunk() -> Chunk:
    return _close([(BOS, DEFAULT_WEIGHT)])


# --- encoding ---------------------------------------------------------------------------------

def encode_chunks(model, chunks: list[Chunk], role: EncoderRole, layer: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond [1, 77*k, dim], pooled [1, pooled_dim]) of one encoder, float32 on the CPU."""
    rows = [[role.pad_id if token is None else token for token, _ in chunk] for chunk in chunks]
    weights = torch.tensor([[weight for _, weight in chunk] for chunk in chunks], dtype=torch.float32)
    weighted = bool((weights != DEFAULT_WEIGHT).any())
    if weighted:
        rows.append([role.pad_id if token is None else token for token, _ in _empty_chunk()])
    hidden, pooled = _run_encoder(model, rows, role, layer)
    if weighted:
        empty, hidden = hidden[-1:], hidden[:-1]
        w = weights.unsqueeze(-1)
        # Only weighted positions move; the others keep their exact values.
        hidden = torch.where(w != DEFAULT_WEIGHT, empty + w * (hidden - empty), hidden)
    return hidden.reshape(1, -1, hidden.shape[-1]), pooled[0:1]


def _run_encoder(model, rows: list[list[int]], role: EncoderRole, layer: int | None):
    """Hidden states [n, 77, dim] at the selected layer and pooled vectors [n, p], on the CPU."""
    device = next(model.parameters()).device
    tokens = torch.tensor(rows, dtype=torch.long, device=device)
    # transformers 5: CLIPTextModel holds the transformer itself, the projection models wrap it.
    text_model = getattr(model, "text_model", model)
    with torch.no_grad():
        out = torch.func.functional_call(model, _float32_state(model), (tokens,), {"output_hidden_states": True})
        final = out.last_hidden_state
        layer = role.default_layer if layer is None else layer
        depth = len(text_model.encoder.layers)
        if layer is None or abs(layer) > depth:
            hidden = final
        else:
            # hidden_states[-1] is the last layer's output before the final LayerNorm.
            hidden = out.hidden_states[layer]
            if role.normalize_hidden:
                hidden = _layer_norm(text_model.final_layer_norm, hidden)
        first_eos = (tokens == EOS).int().argmax(dim=-1)
        pooled = final[torch.arange(final.shape[0], device=device), first_eos]
        projection = getattr(model, "text_projection", None)
        if projection is not None:
            pooled = F.linear(pooled, projection.weight.float(),
                              None if projection.bias is None else projection.bias.float())
    return hidden.float().cpu(), pooled.float().cpu()


def _float32_state(model) -> dict:
    """The model's tensors as float32, for a stateless call that leaves the cached model as it is."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    return {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}


def _layer_norm(norm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)


def _encode(clip, chunks_by_encoder: dict[str, list[Chunk]]) -> tuple[torch.Tensor, torch.Tensor]:
    names = _FAMILY_ENCODERS.get(clip.family)
    if names is None:
        raise ValueError(f"no text conditioning for model family {clip.family!r}")
    missing = [name for name in names if name not in clip.encoders]
    if missing:
        raise ValueError(f"the {clip.family} CLIP lacks its text encoder(s) {', '.join(missing)}")
    conds, pooled = [], None
    for name in names:
        cond, pooled = encode_chunks(clip.encoders[name], chunks_by_encoder[name],
                                     _ROLES[(clip.family, name)], clip.layer)
        conds.append(cond)
    # SDXL: L and G are cut to the shorter token length, then joined on the feature axis.
    length = min(cond.shape[1] for cond in conds)
    return torch.cat([cond[:, :length] for cond in conds], dim=-1), pooled


# --- what the nodes call ----------------------------------------------------------------------

def encode_text(clip, text: str) -> list:
    """CLIPTextEncode: CONDITIONING [[cond, {"pooled_output": pooled}]]."""
    chunks = tokenize(clip.tokenizer, text)
    cond, pooled = _encode(clip, {name: chunks for name in clip.encoders})
    return [[cond, {"pooled_output": pooled}]]


def encode_sdxl(clip, text_g: str, text_l: str, width: int, height: int, crop_w: int, crop_h: int,
                target_width: int, target_height: int) -> list:
    """CLIPTextEncodeSDXL: G and L get their own prompts; the shorter is padded with empty chunks."""
    if clip.family not in ("sdxl", "sdxl_refiner"):
        raise ValueError(f"CLIPTextEncodeSDXL needs an SDXL CLIP, not a {clip.family} one")
    chunks_g = tokenize(clip.tokenizer, text_g)
    chunks_l = tokenize(clip.tokenizer, text_l)
    while len(chunks_l) < len(chunks_g):
        chunks_l.append(_empty_chunk())
    while len(chunks_g) < len(chunks_l):
        chunks_g.append(_empty_chunk())
    cond, pooled = _encode(clip, {"g": chunks_g, "l": chunks_l})
    return [[cond, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
                    "crop_h": crop_h, "target_width": target_width, "target_height": target_height}]]


def encode_sdxl_refiner(clip, text: str, ascore: float, width: int, height: int) -> list:
    """CLIPTextEncodeSDXLRefiner: the prompt plus the refiner's aesthetic score and size."""
    [[cond, extras]] = encode_text(clip, text)
    return [[cond, {**extras, "aesthetic_score": ascore, "width": width, "height": height}]]
