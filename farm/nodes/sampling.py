"""Sampling nodes, KSampler and KSamplerAdvanced; the algorithms live in farm.engine.sampling.

The sampler and scheduler names are ComfyUI 0.3.64's, in its order (the first entry of each is
the UI's default). They are defined here because the schema must not import torch, which
farm.engine.sampling does; the engine's own name tuples must stay an ordered subset of these
(tests/unit/test_model_node_schemas.py checks it).
"""

from __future__ import annotations

import dataclasses

from farm.nodes.base import Node, NodeOutput
from farm.nodes.loaders import use_components

# The samplers the farm implements, in ComfyUI's order (ComfyUI offers more; a prompt naming one
# of those is refused by validation instead of silently running another algorithm). The engine
# keeps one implementation per name; a test holds the two in step.
SAMPLER_NAMES = (
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm",
    "ddim", "uni_pc", "uni_pc_bh2",
)
SCHEDULER_NAMES = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def progress_callback(ctx, steps: int, family: str | None = None):
    """The sampler's per-step callback(step_index, total_steps, x0=None): honour interrupts, offer
    a preview of x0 when previews are on, then report step+1 of the total (the real count, which
    differs from `steps` with denoise < 1, start/end steps or ddim_uniform)."""
    def callback(step: int, total_steps: int | None = None, x0=None) -> None:
        ctx.check_interrupt()
        if x0 is not None and ctx.preview is not None:
            ctx.preview(lambda: _render_preview(x0, family))
        ctx.report_progress(step + 1, total_steps or steps)
    return callback


def _render_preview(x0, family: str | None) -> tuple[str, bytes]:
    from farm.engine.previews import preview_jpeg

    return preview_jpeg(x0, family or "sd1")


class KSampler(Node):
    DISPLAY_NAME = "KSampler"
    CATEGORY = "sampling"
    DESCRIPTION = "Uses the provided model, positive and negative conditioning to denoise the latent image."
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
            "seed": ["INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                             "tooltip": "The random seed used for creating the noise."}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the denoising process."}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence to "
                                         "the prompt. Higher values result in images more closely matching the "
                                         "prompt however too high values will negatively impact quality."}],
            "sampler_name": [list(SAMPLER_NAMES), {
                "tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style of "
                           "the generated output."}],
            "scheduler": [list(SCHEDULER_NAMES), {
                "tooltip": "The scheduler controls how noise is gradually removed to form the image."}],
            "positive": ["CONDITIONING", {
                "tooltip": "The conditioning describing the attributes you want to include in the image."}],
            "negative": ["CONDITIONING", {
                "tooltip": "The conditioning describing the attributes you want to exclude from the image."}],
            "latent_image": ["LATENT", {"tooltip": "The latent image to denoise."}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "The amount of denoising applied, lower values will maintain the "
                                             "structure of the initial image allowing for image to image sampling."}],
        }}

    def run(self, ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=1.0):
        from farm.engine.sampling import ksampler

        use_components(ctx, model)
        callback = progress_callback(ctx, steps, getattr(model, "family", None))

        def alone():
            return ksampler.sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                   denoise=denoise, callback=callback)

        if ctx.group is None or latent_image.get("noise_mask") is not None:
            return NodeOutput(values=(alone(),))
        from farm.engine.sampling.group import GroupMember

        # Coalesced: sampled in one batch with the group's other prompts, each exactly its own
        # noise and conditioning (previews are not drawn for a group's steps).
        arrival = _Arrival(GroupMember(latent_image, seed, positive, negative), model,
                           {"steps": steps, "cfg": cfg, "sampler_name": sampler_name, "scheduler": scheduler,
                            "denoise": denoise}, ctx.report_progress)
        latent = ctx.group.meet("sample", ctx.prompt_id, arrival, lambda batch: _sample_together(batch, ctx.group.mode),
                                ctx.check_interrupt, alone)
        return NodeOutput(values=(latent,))


@dataclasses.dataclass
class _Arrival:
    member: object  # farm.engine.sampling.group.GroupMember
    model: object
    settings: dict
    progress: object  # (value, maximum) -> None; raises the member's Interrupted


class _EveryoneStopped(Exception):
    pass


def _sample_together(batch: dict, mode: str | None) -> dict:
    """A coalesced group's sampling: one batch for every member; each step reports progress to
    each member and checks its interrupt, and a member stopped there gets its exception (its rows
    are dropped) while the others finish; when every member is stopped, sampling ends."""
    from farm.engine.sampling.group import sample_group

    ids = list(batch)
    first = batch[ids[0]]
    stopped: dict = {}

    def callback(step: int, total: int) -> None:
        for prompt_id in ids:
            if prompt_id not in stopped:
                try:
                    batch[prompt_id].progress(step + 1, total)
                except Exception as exception:  # noqa: BLE001 - Interrupted, PromptTimeout: that member's
                    stopped[prompt_id] = exception
        if len(stopped) == len(ids):
            raise _EveryoneStopped()

    try:
        latents = sample_group(first.model, [batch[prompt_id].member for prompt_id in ids], mode=mode,
                               callback=callback, **first.settings)
    except _EveryoneStopped:
        return stopped
    return {prompt_id: stopped.get(prompt_id, latent) for prompt_id, latent in zip(ids, latents)}


class KSamplerAdvanced(Node):
    DISPLAY_NAME = "KSampler (Advanced)"
    CATEGORY = "sampling"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def input_types(cls, env):
        return {"required": {
            "model": ["MODEL"],
            "add_noise": [["enable", "disable"]],
            "noise_seed": ["INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
            "sampler_name": [list(SAMPLER_NAMES)],
            "scheduler": [list(SCHEDULER_NAMES)],
            "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"],
            "latent_image": ["LATENT"],
            "start_at_step": ["INT", {"default": 0, "min": 0, "max": 10000}],
            "end_at_step": ["INT", {"default": 10000, "min": 0, "max": 10000}],
            "return_with_leftover_noise": [["disable", "enable"]],
        }}

    def run(self, ctx, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
            latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        from farm.engine.sampling import ksampler

        use_components(ctx, model)
        # Leftover noise is kept only on request; otherwise a cut schedule still ends at sigma 0.
        latent = ksampler.sample(model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                 latent_image, denoise=1.0, disable_noise=add_noise == "disable",
                                 start_step=start_at_step, last_step=end_at_step,
                                 force_full_denoise=return_with_leftover_noise != "enable",
                                 callback=progress_callback(ctx, steps, getattr(model, "family", None)))
        return NodeOutput(values=(latent,))


NODES = (KSampler, KSamplerAdvanced)
