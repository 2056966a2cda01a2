"""VAE nodes: decode LATENT to IMAGE and encode IMAGE to LATENT, whole or in tiles (farm.engine.vae)."""

from __future__ import annotations

from farm.nodes.base import Node, NodeOutput
from farm.nodes.loaders import use_components


def _require_vae(vae) -> None:
    if vae is None:
        raise ValueError("vae input is invalid: None\n\nIf the vae is from a checkpoint loader node your "
                         "checkpoint does not contain a valid vae.")


def _tiles(tile_step: int, frames: str) -> dict:
    """The tile inputs shared by the tiled nodes; the temporal ones only matter for video VAEs."""
    return {
        "tile_size": ["INT", {"default": 512, "min": 64, "max": 4096, "step": tile_step}],
        "overlap": ["INT", {"default": 64, "min": 0, "max": 4096, "step": 32}],
        "temporal_size": ["INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                  "tooltip": f"Only used for video VAEs: Amount of frames to {frames} at a time."}],
        "temporal_overlap": ["INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                     "tooltip": "Only used for video VAEs: Amount of frames to overlap."}],
    }


class VAEDecode(Node):
    DISPLAY_NAME = "VAE Decode"
    CATEGORY = "latent"
    DESCRIPTION = "Decodes latent images back into pixel space images."
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image.",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
            "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
        }}

    def run(self, ctx, samples, vae):
        from farm.engine import vae as engine

        _require_vae(vae)
        use_components(ctx, vae)
        if ctx.group is None or not _decodes_together(ctx.group, vae):
            return NodeOutput(values=(engine.decode(vae, samples["samples"]),))
        # A coalesced group on a GPU: one decode for every member's latents.
        images = ctx.group.meet("decode", ctx.prompt_id, (vae, samples["samples"]), _decode_together,
                                ctx.check_interrupt, lambda: engine.decode(vae, samples["samples"]))
        return NodeOutput(values=(images,))


def _decodes_together(group, vae) -> bool:
    """Batched groups decode together; exact ones (the CPU's) decode each member as alone, since a
    batch changes the kernels' results there."""
    from farm.engine.sampling.group import BATCHED, default_mode

    return (group.mode or default_mode(next(vae.vae.parameters()).device)) == BATCHED


def _decode_together(batch: dict) -> dict:
    import torch

    from farm.engine import vae as engine

    ids = list(batch)
    vae = batch[ids[0]][0]
    latents = [batch[prompt_id][1] for prompt_id in ids]
    images = engine.decode(vae, torch.cat(latents))
    return dict(zip(ids, images.split([latent.shape[0] for latent in latents])))


class VAEDecodeTiled(Node):
    DISPLAY_NAME = "VAE Decode (Tiled)"
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"samples": ["LATENT"], "vae": ["VAE"], **_tiles(32, "decode")}}

    def run(self, ctx, samples, vae, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
        from farm.engine import vae as engine

        _require_vae(vae)
        use_components(ctx, vae)
        return NodeOutput(values=(engine.decode_tiled(vae, samples["samples"], tile_size, overlap),))


class VAEEncode(Node):
    DISPLAY_NAME = "VAE Encode"
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}}

    def run(self, ctx, pixels, vae):
        from farm.engine import vae as engine

        _require_vae(vae)
        use_components(ctx, vae)
        return NodeOutput(values=({"samples": engine.encode(vae, pixels)},))


class VAEEncodeTiled(Node):
    DISPLAY_NAME = "VAE Encode (Tiled)"
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {"pixels": ["IMAGE"], "vae": ["VAE"], **_tiles(64, "encode")}}

    def run(self, ctx, pixels, vae, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
        from farm.engine import vae as engine

        _require_vae(vae)
        use_components(ctx, vae)
        return NodeOutput(values=({"samples": engine.encode_tiled(vae, pixels, tile_size, overlap)},))


class VAEEncodeForInpaint(Node):
    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    CATEGORY = "latent/inpaint"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "pixels": ["IMAGE"],
            "vae": ["VAE"],
            "mask": ["MASK"],
            "grow_mask_by": ["INT", {"default": 6, "min": 0, "max": 64, "step": 1}],
        }}

    def run(self, ctx, pixels, vae, mask, grow_mask_by=6):
        from farm.engine import vae as engine

        _require_vae(vae)
        use_components(ctx, vae)
        return NodeOutput(values=(engine.encode_for_inpaint(vae, pixels, mask, grow_mask_by),))


NODES = (VAEDecode, VAEDecodeTiled, VAEEncode, VAEEncodeTiled, VAEEncodeForInpaint)
