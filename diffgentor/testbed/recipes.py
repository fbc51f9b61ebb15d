"""The six tiny pipelines as data: every number that shapes a testbed lives here, so the cache hash
covers it (store.py hashes `recipe_as_dict`).

Each mirrors its real family's layout at toy width (repeated DiT blocks, cross-attention UNet levels,
the real VAE latent channels and schedulers) so cache hooks, DeepCache and regional compile have the
same structure to act on. All VAEs have 4 levels: vae_scale_factor 8, as in the real models.
Divisibility of height/width: 16 for Flux, SD3, PixArt and QwenImage (VAE 8 x patch 2), 8 for SD and SDXL.
Weights are random: these prove wiring and measure overhead, never image quality.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diffgentor.testbed.tokenizers import clip_token_ids, qwen2_token_ids

IMAGE_SIZE_PX = 64
VAE_SCALE_FACTOR = 8
LATENT_SIZE = IMAGE_SIZE_PX // VAE_SCALE_FACTOR  # sample_size wherever a config reads it

CLIP_MAX_TOKENS = 77
# As the real T5 tokenizers. Pipelines pad T5 to their own max_sequence_length (Flux 512, SD3 256,
# PixArt 120), never to this; a smaller value would only print false "longer than maximum" warnings.
T5_MAX_TOKENS = 512


@dataclasses.dataclass(frozen=True)
class Component:
    """One pipeline component: a diffusers/transformers class name, its constructor config, its seed.

    `cls=None` is a component the pipeline accepts as absent (safety checker, image encoder).
    `seed=None` for parts without weights (tokenizers, schedulers).
    """

    cls: str | None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A whole pipeline: its class name, components by init-argument name, extra init arguments."""

    pipeline: str
    components: dict[str, Component]
    pipeline_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def recipe_as_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


# ---- shared encoders -------------------------------------------------------------------------

CLIP_HIDDEN = 32
CLIP_PROJECTION = 32
T5_WIDTH = 64  # SD3 pads the two CLIP widths (2 x 32) up to the T5 width, so it must be >= 64

CLIP_TEXT = {
    **clip_token_ids(),
    "hidden_size": CLIP_HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,  # SDXL/SD3 read the penultimate layer
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_TOKENS,
    "projection_dim": CLIP_PROJECTION,
    "hidden_act": "quick_gelu",
}

T5_ENCODER = {
    "vocab_size": 98,  # len(tokenizers.t5_vocab())
    "d_model": T5_WIDTH,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",  # T5 v1.1, as Flux/SD3/PixArt use
    "is_encoder_decoder": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

CLIP_TOKENIZER = Component("CLIPTokenizer", {"model_max_length": CLIP_MAX_TOKENS})
T5_TOKENIZER = Component("T5Tokenizer", {"model_max_length": T5_MAX_TOKENS})


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float | None, quant_conv: bool) -> dict:
    """4-level AutoencoderKL (scale factor 8) with attention in the mid block, as the real ones."""
    return {
        "block_out_channels": (16, 32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "latent_channels": latent_channels,
        "norm_num_groups": 8,
        "sample_size": IMAGE_SIZE_PX,
        "scaling_factor": scaling_factor,
        "shift_factor": shift_factor,
        "use_quant_conv": quant_conv,
        "use_post_quant_conv": quant_conv,
    }


SD_VAE = _vae(4, 0.18215, None, True)
SDXL_VAE = _vae(4, 0.13025, None, True)
FLUX_VAE = _vae(16, 0.3611, 0.1159, False)
SD3_VAE = _vae(16, 1.5305, 0.0609, False)

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
EULER = {**SD_BETAS, "timestep_spacing": "leading", "steps_offset": 1, "prediction_type": "epsilon"}

# ---- the six pipelines ----------------------------------------------------------------------

TINY_FLUX = Recipe(
    pipeline="FluxPipeline",
    components={
        "transformer": Component(
            "FluxTransformer2DModel",
            {
                "patch_size": 1,
                "in_channels": 4 * 16,  # 2x2-packed VAE latents
                "num_layers": 2,
                "num_single_layers": 4,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": T5_WIDTH,
                "pooled_projection_dim": CLIP_HIDDEN,  # CLIPTextModel pooler_output
                "guidance_embeds": True,  # FLUX.1-dev style: guidance_scale is an input, no CFG batch
                "axes_dims_rope": (4, 6, 6),  # must sum to attention_head_dim
            },
            seed=0,
        ),
        "vae": Component("AutoencoderKL", FLUX_VAE, seed=1),
        "text_encoder": Component("CLIPTextModel", CLIP_TEXT, seed=2),
        "tokenizer": CLIP_TOKENIZER,
        "text_encoder_2": Component("T5EncoderModel", T5_ENCODER, seed=3),
        "tokenizer_2": T5_TOKENIZER,
        "scheduler": Component(
            "FlowMatchEulerDiscreteScheduler",
            {
                "shift": 3.0,
                "use_dynamic_shifting": True,
                "base_shift": 0.5,
                "max_shift": 1.15,
                "base_image_seq_len": 256,
                "max_image_seq_len": 4096,
            },
        ),
    },
)

TINY_SD3 = Recipe(
    pipeline="StableDiffusion3Pipeline",
    components={
        "transformer": Component(
            "SD3Transformer2DModel",
            {
                "sample_size": LATENT_SIZE,
                "patch_size": 2,
                "in_channels": 16,
                "out_channels": 16,
                "num_layers": 4,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "joint_attention_dim": T5_WIDTH,
                "caption_projection_dim": 32,  # = heads x head dim
                "pooled_projection_dim": 2 * CLIP_PROJECTION,  # both CLIP text_embeds concatenated
                "pos_embed_max_size": 32,  # fixed sin-cos table: up to 32 x 2 x 8 = 512 px
            },
            seed=0,
        ),
        "vae": Component("AutoencoderKL", SD3_VAE, seed=1),
        "text_encoder": Component("CLIPTextModelWithProjection", CLIP_TEXT, seed=2),
        "tokenizer": CLIP_TOKENIZER,
        "text_encoder_2": Component("CLIPTextModelWithProjection", CLIP_TEXT, seed=3),
        "tokenizer_2": CLIP_TOKENIZER,
        "text_encoder_3": Component("T5EncoderModel", T5_ENCODER, seed=4),
        "tokenizer_3": T5_TOKENIZER,
        "scheduler": Component("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),
        "image_encoder": Component(None),
        "feature_extractor": Component(None),
    },
)

TINY_PIXART = Recipe(
    pipeline="PixArtAlphaPipeline",
    components={
        "transformer": Component(
            "PixArtTransformer2DModel",
            {
                # sample_size 8 is not one of PixArt's binning sizes (32/64/128), so a call that keeps the
                # default use_resolution_binning=True fails loudly instead of silently rendering 256 px.
                "sample_size": LATENT_SIZE,
                "patch_size": 2,
                "in_channels": 4,
                "out_channels": 8,  # learned sigma: the pipeline keeps the first half
                "num_layers": 4,
                "attention_head_dim": 16,
                "num_attention_heads": 2,
                "cross_attention_dim": 32,  # = heads x head dim
                "caption_channels": T5_WIDTH,
                "norm_type": "ada_norm_single",
                "norm_elementwise_affine": False,
                "norm_eps": 1e-6,
                "num_embeds_ada_norm": 1000,
                "activation_fn": "gelu-approximate",
                "attention_bias": True,
            },
            seed=0,
        ),
        "vae": Component("AutoencoderKL", SD_VAE, seed=1),
        "text_encoder": Component("T5EncoderModel", T5_ENCODER, seed=2),
        "tokenizer": T5_TOKENIZER,
        "scheduler": Component(
            "DPMSolverMultistepScheduler",
            {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000},
        ),
    },
)

TINY_SD = Recipe(
    pipeline="StableDiffusionPipeline",
    components={
        "unet": Component(
            "UNet2DConditionModel",
            {
                "sample_size": LATENT_SIZE,
                "in_channels": 4,
                "out_channels": 4,
                "block_out_channels": (32, 64, 64),
                "layers_per_block": 2,  # as SD 1.x: DeepCache branch ids index these
                "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                "cross_attention_dim": CLIP_HIDDEN,
                "attention_head_dim": 8,
                "norm_num_groups": 8,
            },
            seed=0,
        ),
        "vae": Component("AutoencoderKL", SD_VAE, seed=1),
        "text_encoder": Component("CLIPTextModel", CLIP_TEXT, seed=2),
        "tokenizer": CLIP_TOKENIZER,
        "scheduler": Component("EulerDiscreteScheduler", EULER),
        "safety_checker": Component(None),
        "feature_extractor": Component(None),
        "image_encoder": Component(None),
    },
    pipeline_kwargs={"requires_safety_checker": False},
)

SDXL_TIME_EMBED = 8

TINY_SDXL = Recipe(
    pipeline="StableDiffusionXLPipeline",
    components={
        "unet": Component(
            "UNet2DConditionModel",
            {
                "sample_size": LATENT_SIZE,
                "in_channels": 4,
                "out_channels": 4,
                "block_out_channels": (32, 64, 64),
                "layers_per_block": 2,
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                "transformer_layers_per_block": (1, 1, 2),
                "attention_head_dim": (2, 4, 4),
                "use_linear_projection": True,
                "cross_attention_dim": 2 * CLIP_HIDDEN,  # both CLIP hidden states concatenated
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": SDXL_TIME_EMBED,
                # 6 size/crop numbers, each embedded, + text_encoder_2's pooled text_embeds
                "projection_class_embeddings_input_dim": 6 * SDXL_TIME_EMBED + CLIP_PROJECTION,
                "norm_num_groups": 8,
            },
            seed=0,
        ),
        "vae": Component("AutoencoderKL", SDXL_VAE, seed=1),
        "text_encoder": Component("CLIPTextModel", CLIP_TEXT, seed=2),
        "tokenizer": CLIP_TOKENIZER,
        "text_encoder_2": Component("CLIPTextModelWithProjection", CLIP_TEXT, seed=3),
        "tokenizer_2": CLIP_TOKENIZER,
        "scheduler": Component("EulerDiscreteScheduler", EULER),
        "image_encoder": Component(None),
        "feature_extractor": Component(None),
    },
    pipeline_kwargs={"force_zeros_for_empty_prompt": True, "add_watermarker": False},
)

QWEN_TEXT_WIDTH = 32  # Qwen2.5-VL hidden size = the transformer's joint_attention_dim
QWEN_HEAD_DIM = 16

TINY_QWENIMAGE = Recipe(
    pipeline="QwenImagePipeline",
    components={
        "transformer": Component(
            "QwenImageTransformer2DModel",
            {
                "patch_size": 2,
                "in_channels": 4 * 16,  # 2x2-packed VAE latents (z_dim 16)
                "out_channels": 16,
                "num_layers": 4,
                "attention_head_dim": QWEN_HEAD_DIM,
                "num_attention_heads": 2,
                "joint_attention_dim": QWEN_TEXT_WIDTH,
                "guidance_embeds": False,  # as Qwen-Image: true CFG (negative_prompt + true_cfg_scale), no distillation
                "axes_dims_rope": (4, 6, 6),  # must sum to attention_head_dim
            },
            seed=0,
        ),
        # The Wan-style causal 3D VAE; 4 levels (3 downsamples: vae_scale_factor 8) and z_dim 16 as the real one,
        # which keeps its shipped per-channel latents_mean/std defaults.
        "vae": Component(
            "AutoencoderKLQwenImage",
            {
                "base_dim": 8,
                "z_dim": 16,
                # lists, not tuples: the VAE concatenates these to lists
                "dim_mult": [1, 2, 4, 4],
                "num_res_blocks": 1,
                "attn_scales": [],
                "temperal_downsample": [False, True, True],  # diffusers' spelling; its length sets the scale 8
            },
            seed=1,
        ),
        "text_encoder": Component(
            "Qwen2_5_VLForConditionalGeneration",
            {
                "text_config": {
                    **qwen2_token_ids(),
                    "hidden_size": QWEN_TEXT_WIDTH,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,  # the pipeline reads the last hidden state
                    "num_attention_heads": 2,
                    "num_key_value_heads": 1,  # grouped-query attention, as the real one
                    "max_position_embeddings": 2048,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                        "mrope_section": (2, 3, 3)},  # sums to head dim / 2
                },
                # The vision tower is never run by the text-to-image pipeline, but the class always builds it.
                "vision_config": {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                                  "out_hidden_size": QWEN_TEXT_WIDTH, "fullatt_block_indexes": (0,)},
            },
            seed=2,
        ),
        "tokenizer": Component("Qwen2Tokenizer", {"model_max_length": 131072}),  # as the real tokenizer
        # Qwen-Image's scheduler_config: exponential time shift, terminal sigma 0.02. The terminal stretch makes
        # a 1-step call all NaN (diffusers divides 0 by 0 in stretch_shift_to_terminal), as on the real model.
        "scheduler": Component(
            "FlowMatchEulerDiscreteScheduler",
            {
                "shift": 1.0,
                "use_dynamic_shifting": True,
                "base_shift": 0.5,
                "max_shift": 0.9,
                "base_image_seq_len": 256,
                "max_image_seq_len": 8192,
                "shift_terminal": 0.02,
                "time_shift_type": "exponential",
            },
        ),
    },
)

RECIPES: dict[str, Recipe] = {
    "tiny-flux": TINY_FLUX,
    "tiny-sd": TINY_SD,
    "tiny-sdxl": TINY_SDXL,
    "tiny-sd3": TINY_SD3,
    "tiny-pixart": TINY_PIXART,
    "tiny-qwenimage": TINY_QWENIMAGE,
}

# Steps and guidance are each pipeline's own call defaults (so step-count-tuned caches behave as on the
# real model); size is the testbed's 64 px, which Flux must be told (its pipeline defaults to 1024 px).
TESTBED_DEFAULTS: dict[str, dict[str, float | int]] = {
    "tiny-flux": {"steps": 28, "guidance_scale": 3.5, "height": IMAGE_SIZE_PX, "width": IMAGE_SIZE_PX},
    "tiny-sd": {"steps": 50, "guidance_scale": 7.5, "height": IMAGE_SIZE_PX, "width": IMAGE_SIZE_PX},
    "tiny-sdxl": {"steps": 50, "guidance_scale": 5.0, "height": IMAGE_SIZE_PX, "width": IMAGE_SIZE_PX},
    "tiny-sd3": {"steps": 28, "guidance_scale": 7.0, "height": IMAGE_SIZE_PX, "width": IMAGE_SIZE_PX},
    "tiny-pixart": {"steps": 20, "guidance_scale": 4.5, "height": IMAGE_SIZE_PX, "width": IMAGE_SIZE_PX},
    "tiny-qwenimage": {"steps": 50, "guidance_scale": 4.0, "height": IMAGE_SIZE_PX, "width": IMAGE_SIZE_PX},
}

# Pipeline-call arguments a testbed NEEDS beyond the defaults above. PixArt's resolution binning maps any
# request onto its 256/512/1024 px bins, so at 64 px it must be off; clean_caption=True (its default) needs
# beautifulsoup4 + ftfy and prints a notice on every call without them.
TESTBED_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "tiny-flux": {},
    "tiny-sd": {},
    "tiny-sdxl": {},
    "tiny-sd3": {},
    "tiny-pixart": {"use_resolution_binning": False, "clean_caption": False},
    "tiny-qwenimage": {},
}

# Smallest step of height/width each testbed accepts.
TESTBED_SIZE_MULTIPLE_PX: dict[str, int] = {
    "tiny-flux": VAE_SCALE_FACTOR * 2,
    "tiny-sd": VAE_SCALE_FACTOR,
    "tiny-sdxl": VAE_SCALE_FACTOR,
    "tiny-sd3": VAE_SCALE_FACTOR * 2,
    "tiny-pixart": VAE_SCALE_FACTOR * 2,
    "tiny-qwenimage": VAE_SCALE_FACTOR * 2,
}
