"""Load ComfyUI-style single-file checkpoints and VAEs into diffusers/transformers modules, offline.

Invariants:
- Nothing touches the network or the Hugging Face Hub: the architecture is inferred from the file
  (farm.engine.architecture), modules are built with empty weights (accelerate's
  init_empty_weights, so non-persistent buffers stay real) and filled with
  `load_state_dict(strict=True, assign=True)` after diffusers' own single-file conversion functions.
  A weight the architecture does not expect, or one it lacks, is an error, never random init.
- Pickles (.ckpt/.pt/.pth/.bin) are only read with `torch.load(weights_only=True)`; one that needs
  code execution is refused as unsafe.
- Loaded tensors are always copies: safetensors hands out mmapped tensors, and a module still
  pointing into a file that is later replaced or truncated would crash the worker with SIGBUS.
- Every failure is a CheckpointError naming the file and what is wrong with it.
- Cache keys: (resolved path, size, mtime_ns, component, dtype, device); a changed file gets a new key.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re

import torch

from farm.engine import architecture as arch
from farm.engine import ldm_layout
from farm.engine.types import Autoencoder, DiffusionModel, TextEncoders

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
_PRIVATE_OPENCLIP_PREFIX = "farm_openclip."


class CheckpointError(Exception):
    """A model file that cannot be loaded; the message says which file and why."""


@dataclasses.dataclass(frozen=True)
class _File:
    path: str  # resolved
    size: int
    mtime_ns: int

    def key(self, component: str, dtype: torch.dtype, device: torch.device) -> tuple:
        return (self.path, self.size, self.mtime_ns, component, str(dtype), str(device))


def _stat(path) -> _File:
    resolved = os.path.realpath(os.fspath(path))
    try:
        st = os.stat(resolved)
    except FileNotFoundError:
        raise CheckpointError(f"model file not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if not os.path.isfile(resolved):
        raise CheckpointError(f"not a file: {path}")
    return _File(resolved, st.st_size, st.st_mtime_ns)


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the safetensors `__metadata__` (empty for pickles) of a model file, on the CPU.

    Safetensors tensors are mmapped: copy what you keep (see the module docstring)."""
    path = os.fspath(path)
    _stat(path)
    if path.lower().endswith(SAFETENSORS_SUFFIXES) or _looks_like_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # SafetensorError, OSError: a damaged header or truncated data
            raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated): {exc}") from None
        return tensors, metadata
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickling_detail(str(exc))
        if "GLOBAL" in detail:
            raise CheckpointError(
                f"refused to load {path}: it is an unsafe pickle that would run code when loaded ({detail}). "
                f"Convert it to .safetensors from a trusted source.") from None
        raise CheckpointError(f"{path} is not a readable checkpoint: not a weights-only PyTorch file "
                              f"(corrupt, or an unsafe pickle): {detail}") from None
    except Exception as exc:  # zip errors, EOF, wrong magic number
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated): {exc}") from None
    # Old LDM training checkpoints nest the weights under "state_dict" next to optimizer state.
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}, {}


def _looks_like_safetensors(path: str) -> bool:
    """A safetensors file opens with an 8-byte header length and then the JSON header's '{'."""
    with open(path, "rb") as f:
        return f.read(9)[8:] == b"{"


def _unpickling_detail(message: str) -> str:
    """The reason in torch's weights-only error, without its boilerplate about `weights_only=False`
    (which must never be followed here)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
    lines = [line.strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not line.startswith(boilerplate)]
    return " ".join(kept).removeprefix("WeightsUnpickler error:").strip() or lines[0]


def default_dtypes(device) -> dict[str, torch.dtype]:
    """fp32 on CPU; on CUDA fp16 UNet and text encoders, bf16 VAE where supported (spec §2.9)."""
    if torch.device(device).type != "cuda":
        return {"unet": torch.float32, "clip": torch.float32, "vae": torch.float32}
    vae = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return {"unet": torch.float16, "clip": torch.float16, "vae": vae}


def _fill(module, state_dict: dict, *, device, dtype, what: str, path: str):
    """Load converted weights into an empty module: exact key match, copied to device and dtype."""
    tensors = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=True)
               for k, v in state_dict.items()}
    try:
        module.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        detail = re.sub(r"\s+", " ", str(exc))[:600]
        raise CheckpointError(f"{path}: the {what} weights do not match the inferred architecture: {detail}") from None
    module.to(device)  # the buffers, which were built on the CPU
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: the {what} has no weights for {left[:5]}")
    return module.eval().requires_grad_(False)


def _build_unet(sd, config, *, device, dtype, path):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with init_empty_weights():
        unet = UNet2DConditionModel(**config)
    converted = convert_ldm_unet_checkpoint(sd, dict(unet.config))
    return _fill(unet, converted, device=device, dtype=dtype, what="UNet", path=path)


def _build_vae(sd, config, *, device, dtype, path):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with init_empty_weights():
        vae = AutoencoderKL(**config)
    converted = convert_ldm_vae_checkpoint(sd, dict(vae.config))
    return _fill(vae, converted, device=device, dtype=dtype, what="VAE", path=path)


def _build_text_encoder(sd, spec: arch.TextEncoderSpec, *, device, dtype, path):
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
    with init_empty_weights():
        model = cls(CLIPTextConfig(**spec.config))
    part = {k: v for k, v in sd.items() if k.startswith(spec.prefix)}
    if spec.open_clip:
        # diffusers drops resblocks.23 and text_projection of keys under "cond_stage_model.model."
        # (its SD2 pipeline runs a 23-layer encoder). We keep all layers so CLIPSetLastLayer can
        # pick any of them, hence a private prefix that the ignore list does not match.
        part = {_PRIVATE_OPENCLIP_PREFIX + k[len(spec.prefix):]: v for k, v in part.items()}
        converted = convert_open_clip_checkpoint(model, part, prefix=_PRIVATE_OPENCLIP_PREFIX)
    else:
        converted = convert_ldm_clip_checkpoint(part, remove_prefix=spec.prefix)
    # transformers >= 5.6 flattened CLIPTextModel (no "text_model." prefix; some old SD1 files lack it
    # too) while CLIPTextModelWithProjection and older releases keep it: match what the module has.
    nested = any(k.startswith("text_model.") for k in model.state_dict())
    converted = {("text_model." if nested and k != "text_projection.weight" else "") + k.removeprefix("text_model."): v
                 for k, v in converted.items()}
    converted = {k: v for k, v in converted.items() if not k.endswith("position_ids")}
    return _fill(model, converted, device=device, dtype=dtype, what=f"text encoder ({spec.prefix})", path=path)


def _detect(sd, metadata, path) -> arch.Architecture:
    try:
        return arch.detect(sd, metadata)
    except arch.ArchitectureError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_checkpoint(path, *, device="cpu", unet_dtype=None, clip_dtype=None, vae_dtype=None):
    """CheckpointLoaderSimple: (DiffusionModel, TextEncoders, Autoencoder) from one file.

    A file without text encoder or VAE weights gives None in that slot, as ComfyUI does.
    """
    info = _stat(path)
    device = torch.device(device)
    defaults = default_dtypes(device)
    dtypes = {"unet": unet_dtype or defaults["unet"], "clip": clip_dtype or defaults["clip"],
              "vae": vae_dtype or defaults["vae"]}
    sd, metadata = read_state_dict(path)
    spec = _detect(sd, metadata, path)
    try:
        unet = _build_unet(sd, spec.unet, device=device, dtype=dtypes["unet"], path=path)
        model = DiffusionModel(unet=unet, family=spec.family, prediction=spec.prediction,
                               key=info.key("unet", dtypes["unet"], device))
        clip = None
        if spec.text_encoders:
            expected = {name for name, _, _ in arch.ENCODER_SLOTS[spec.family]}
            if set(spec.text_encoders) != expected:
                raise CheckpointError(f"{path}: incomplete text encoders for {spec.family}: found "
                                      f"{sorted(spec.text_encoders)}, expected {sorted(expected)}")
            from farm.engine.tokenizer import TokenizerUnavailable, clip_tokenizer

            encoders = {name: _build_text_encoder(sd, te, device=device, dtype=dtypes["clip"], path=path)
                        for name, te in spec.text_encoders.items()}
            try:
                tokenizer = clip_tokenizer()
            except TokenizerUnavailable as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            clip = TextEncoders(family=spec.family, encoders=encoders, tokenizer=tokenizer,
                                key=info.key("clip", dtypes["clip"], device))
        vae = None
        if spec.vae is not None:
            vae_module = _build_vae(sd, spec.vae, device=device, dtype=dtypes["vae"], path=path)
            vae = Autoencoder(vae=vae_module, family=spec.family, key=info.key("vae", dtypes["vae"], device))
    except (KeyError, ValueError, IndexError) as exc:  # conversion found a tensor missing or misshapen
        raise CheckpointError(f"{path}: cannot convert the weights ({type(exc).__name__}: {exc})") from None
    return model, clip, vae


def _vae_family(path: str, sd: dict, metadata: dict) -> str:
    """Which latent space a VAE serves. SD1 and SDXL VAEs have identical shapes, so this asks the
    UNet of a full checkpoint, then the farm/modelspec metadata, then the file name ("sdxl_vae")."""
    family = arch.read_overrides(metadata).get("family")
    if family in arch.FAMILIES:
        return family
    if ldm_layout.UNET_PREFIX + "input_blocks.0.0.weight" in sd:
        try:
            return arch.detect_family(sd)
        except arch.ArchitectureError:
            pass
    hint = (metadata.get("modelspec.architecture", "") + " " + os.path.basename(path)).lower()
    return "sdxl" if "xl" in hint else "sd1"


def load_vae(path, *, device="cpu", dtype=None) -> Autoencoder:
    """VAELoader: a standalone VAE in LDM names (with or without `first_stage_model.`) or diffusers names."""
    info = _stat(path)
    device = torch.device(device)
    dtype = dtype or default_dtypes(device)["vae"]
    sd, metadata = read_state_dict(path)
    prefix = next((p for p in (ldm_layout.VAE_PREFIX, "vae.", "") if p + "encoder.conv_in.weight" in sd), None)
    if prefix is None or (prefix == "" and "encoder.down.0.block.0.conv1.weight" not in sd):
        if "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:  # diffusers names: rename to LDM
            try:
                sd = ldm_layout.vae_to_ldm({k: v for k, v in sd.items() if not k.startswith("loss.")}, prefix="")
            except (KeyError, ValueError) as exc:
                raise CheckpointError(f"{path}: unexpected key in a diffusers-format VAE: {exc}") from None
            prefix = ""
        else:
            raise CheckpointError(f"{path} is not a VAE: it looks like {arch.describe_unknown(sd)}")
    family = _vae_family(path, sd, metadata)
    part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    try:
        config = {**arch.infer_vae_config(part, "", family), **arch.read_overrides(metadata).get("vae", {})}
        module = _build_vae(part, config, device=device, dtype=dtype, path=path)
    except arch.ArchitectureError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: cannot convert the VAE weights ({type(exc).__name__}: {exc})") from None
    return Autoencoder(vae=module, family=family, key=info.key("vae", dtype, device))


def read_lora(path) -> dict:
    """A LoRA file parsed into {module name as stored: {"up", "down", optional "alpha"/"mid"}} (see loras.py)."""
    from farm.engine.loras import parse_lora

    sd, _ = read_state_dict(path)
    try:
        return parse_lora({k: v.clone() for k, v in sd.items()})  # LoRAs are small; never keep an mmap
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
