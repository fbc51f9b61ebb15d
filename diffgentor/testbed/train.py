"""Train the `shapes-flux` testbed: a real FluxPipeline that draws the procedural shapes of shapes.py.

    python -m diffgentor.testbed.train --out DIR --minutes 30 --seed 0

Two stages on the CPU, then one save:

1. a small AutoencoderKL (64x64x3 <-> 16x16x4, fully convolutional, trained on 32x32 crops, which is the
   same network at a quarter of the cost); its scaling/shift factors come from the latents' statistics;
2. a small FluxTransformer2DModel with the rectified-flow objective on the VAE's latents of a fixed,
   pre-encoded data set, trained JOINTLY with its tiny CLIP and T5 text encoders (random init, the testbed's
   offline character-level tokenizers). Frozen random encoders were tried first: in 2400 steps the model
   learned which colours a caption names but not which is the shape's and which the background's, nor the
   shapes (held-out colour pairs 0-16% right). guidance_embeds=False: no guidance input, so the
   pipeline ignores guidance_scale; captions are dropped to "" 10% of the time, so FluxPipeline's true CFG
   (true_cfg_scale > 1, negative_prompt "") also works. EMA weights are shipped.

The result is saved with `save_pretrained` in fp16 (a few MB), loads with the ordinary
`DiffusionPipeline.from_pretrained(DIR)`, and is scored on the held-out captions (shapes.heldout_scenes).

Reproducible: everything is seeded and the step counts are fixed numbers. `--minutes` only chooses the
step counts when they are not given (from a short speed measurement) and stops a stage at its share of
the budget; the counts actually run are printed and recorded in DIR/training.json, and rerunning with
`--vae-steps A --flux-steps B` (same seed, threads, library versions) repeats the run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import time
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from diffgentor.testbed import shapes
from diffgentor.testbed.recipes import CLIP_MAX_TOKENS, CLIP_TEXT, T5_ENCODER, T5_MAX_TOKENS
from diffgentor.testbed.tokenizers import clip_tokenizer, t5_tokenizer

# ---- architecture (all numbers that shape the shipped model) ----------------------------------------

TEXT_WIDTH = 64
#: T5 tokens per caption the model is trained with (longest caption: 50 with the end token). Pass it to the
#: pipeline as max_sequence_length; FluxPipeline's default (512) pads with 440 more tokens than it ever saw.
MAX_SEQUENCE_LENGTH = 72
STEPS = 28

CLIP_CONFIG = {**CLIP_TEXT, "hidden_size": TEXT_WIDTH, "intermediate_size": 2 * TEXT_WIDTH, "projection_dim": TEXT_WIDTH}
T5_CONFIG = {**T5_ENCODER, "d_model": TEXT_WIDTH, "dropout_rate": 0.0}

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,  # 3 levels: 64 px -> 16 x 16 latents
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "block_out_channels": (32, 32, 64),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": shapes.IMAGE_SIZE_PX,
    "mid_block_add_attention": False,  # fully convolutional, so 32 px crops train the 64 px model
    "use_quant_conv": False,  # as FLUX.1's VAE
    "use_post_quant_conv": False,
    "force_upcast": False,
}

TRANSFORMER_CONFIG = {
    "patch_size": 1,
    "in_channels": 4 * VAE_CONFIG["latent_channels"],  # 2x2-packed latents: 64 image tokens at 64 px
    "num_layers": 2,
    "num_single_layers": 4,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": TEXT_WIDTH,
    "pooled_projection_dim": TEXT_WIDTH,
    "guidance_embeds": False,
    # RoPE is Flux's only position signal. With theta 10000 and 8 x 8 image tokens only the fastest few
    # frequencies of an axis turn noticeably, so most of each head goes to the two image axes (sum = head dim).
    "axes_dims_rope": (4, 14, 14),
}

#: FLUX.1's dynamic shifting, rescaled so that this model's 64 image tokens (64 px) sit where FLUX.1's
#: 256 tokens (512 px) sit: mu = base_shift = 0.5, i.e. sigmas shifted by e^0.5 ~ 1.65.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 64,
    "max_image_seq_len": 1024,
}
TRAIN_MU = 0.5  # the shift the pipeline applies at 64 tokens; training samples sigmas the same way

# ---- training defaults ------------------------------------------------------------------------------

VAE_CROP_PX = 32
VAE_BATCH = 16
VAE_LR = 1e-3
VAE_KL_WEIGHT = 1e-5
FLUX_BATCH = 16  # more, smaller steps learn faster than fewer big ones in a short budget
FLUX_LR = 8e-4
FLUX_WARMUP_STEPS = 200
#: Loss weight of the latent cells a shape covers (dilated by one cell), relative to 1 for background: the
#: optimum is unchanged (a per-element weight), but the few shape cells get the capacity they need.
FOREGROUND_LOSS_WEIGHT = 4.0
#: Share of captions replaced by "" in training, so the model also knows the unconditional velocity and
#: FluxPipeline's true CFG (true_cfg_scale > 1 with negative_prompt "") can be used.
CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.998
DATASET_SIZE = 16_000
#: Share of --minutes for each stage; the rest is encoding, saving and the held-out evaluation.
VAE_SHARE, FLUX_SHARE = 0.18, 0.72


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    return module.eval().requires_grad_(False)


def build_pipeline(seed: int):
    """A FluxPipeline of randomly initialised networks (frozen) with the testbed's offline tokenizers."""
    import diffusers
    import transformers

    torch.manual_seed(seed)
    clip = _frozen(transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIP_CONFIG)))
    torch.manual_seed(seed + 1)
    t5 = _frozen(transformers.T5EncoderModel(transformers.T5Config(**T5_CONFIG)))
    torch.manual_seed(seed + 2)
    vae = diffusers.AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 3)
    transformer = diffusers.FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    return diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer(CLIP_MAX_TOKENS),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer(T5_MAX_TOKENS),
        transformer=transformer,
    )


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def to_pixels(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], as the VAE expects."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---- stage 1: VAE -----------------------------------------------------------------------------------


def vae_step(vae, optimizer, rng: np.random.Generator, generator: torch.Generator) -> float:
    scenes = [shapes.sample_scene(rng) for _ in range(VAE_BATCH)]
    images = shapes.render_batch(scenes)
    top, left = rng.integers(0, shapes.IMAGE_SIZE_PX - VAE_CROP_PX + 1, size=2)
    x = to_pixels(images[:, top:top + VAE_CROP_PX, left:left + VAE_CROP_PX])
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator)).sample
    loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + VAE_KL_WEIGHT * posterior.kl().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    optimizer.step()
    return loss.detach().item()


def train_vae(vae, steps: int, seed: int, deadline: float) -> dict:
    vae.train().requires_grad_(True)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, 50))
    losses, done = [], 0
    with tqdm(total=steps, desc="vae", dynamic_ncols=True, mininterval=5.0) as bar:
        for step in range(steps):
            if time.monotonic() > deadline:
                tqdm.write(f"vae: budget spent after {step} of {steps} steps")
                break
            losses.append(vae_step(vae, optimizer, rng, generator))
            scheduler.step()
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    _frozen(vae)
    return {"steps": done, "steps_planned": steps, "final_loss": float(np.mean(losses[-50:])) if losses else None}


@torch.inference_mode()
def encode_images(vae, images_uint8: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Posterior means (N, 4, 16, 16), unscaled."""
    return torch.cat([vae.encode(to_pixels(images_uint8[i:i + batch])).latent_dist.mode()
                      for i in range(0, len(images_uint8), batch)])


def set_latent_scaling(vae, latents: torch.Tensor) -> dict:
    """shift = mean, scale = 1/std of the raw latents: what the transformer sees is zero-mean, unit-std."""
    shift, std = float(latents.mean()), float(latents.std())
    vae.register_to_config(shift_factor=round(shift, 4), scaling_factor=round(1.0 / std, 4))
    return {"shift_factor": vae.config.shift_factor, "scaling_factor": vae.config.scaling_factor}


@torch.inference_mode()
def reconstruction_psnr_db(vae, images_uint8: np.ndarray) -> float:
    x = to_pixels(images_uint8)
    recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = float((recon - x).div(2).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# ---- stage 2: transformer ---------------------------------------------------------------------------


def all_train_captions() -> list[str]:
    return sorted({
        shapes.caption(shape, fg, bg, size) for fg, bg, shape in shapes.TRAIN_TRIPLES for size in (*shapes.SIZES, None)
    })


def tokenize(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP ids (C, 77), T5 ids (C, MAX_SEQUENCE_LENGTH)), padded exactly as FluxPipeline.encode_prompt pads."""
    clip = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer_max_length, truncation=True,
                          return_tensors="pt").input_ids
    t5 = pipe.tokenizer_2(captions, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                          return_tensors="pt").input_ids
    return clip, t5


def foreground_weights(scenes: list[shapes.Scene], latent_size: int) -> torch.Tensor:
    """(N, 1, L, L): FOREGROUND_LOSS_WEIGHT on the latent cells a scene's shape touches (dilated 1 cell), else 1."""
    alpha = torch.from_numpy(np.stack([shapes.shape_mask(s.shape, s.centre_xy, shapes.SIZES[s.size]) for s in scenes]))
    cells = torch.nn.functional.adaptive_max_pool2d(alpha[:, None], latent_size)
    touched = torch.nn.functional.max_pool2d((cells > 0.05).float(), 3, stride=1, padding=1)
    return 1.0 + (FOREGROUND_LOSS_WEIGHT - 1.0) * touched


def pack(latents: torch.Tensor) -> torch.Tensor:
    from diffgentor.internals import pack_flux_latents

    return pack_flux_latents(latents)


def sample_sigmas(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Half logit-normal(0, 1), half uniform (the high-noise steps, where a tiny model decides layout and shape,
    get a fair share), then the exponential time shift the pipeline applies at 64 tokens."""
    uniform = torch.rand(batch, generator=generator)
    logit_normal = torch.sigmoid(torch.randn(batch, generator=generator))
    sigma = torch.where(torch.rand(batch, generator=generator) < 0.5, uniform, logit_normal)
    shift = math.exp(TRAIN_MU)
    return shift * sigma / (1 + (shift - 1) * sigma)


class TextToVelocity(torch.nn.Module):
    """The three trained networks, wired as FluxPipeline wires them: CLIP pooled output and T5 hidden states
    condition the transformer, which predicts the flow velocity of packed latents."""

    def __init__(self, text_encoder, text_encoder_2, transformer):
        super().__init__()
        self.text_encoder, self.text_encoder_2, self.transformer = text_encoder, text_encoder_2, transformer
        self.register_buffer("img_ids", image_ids(), persistent=False)
        self.register_buffer("txt_ids", torch.zeros(MAX_SEQUENCE_LENGTH, 3), persistent=False)

    def forward(self, clip_ids: torch.Tensor, t5_ids: torch.Tensor, xt: torch.Tensor, sigma: torch.Tensor):
        pooled = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output
        t5 = self.text_encoder_2(t5_ids, output_hidden_states=False)[0]
        return self.transformer(hidden_states=xt, timestep=sigma, pooled_projections=pooled,
                                encoder_hidden_states=t5, txt_ids=self.txt_ids, img_ids=self.img_ids,
                                return_dict=False)[0]


def flow_matching_step(model: TextToVelocity, optimizer, x0: torch.Tensor, clip_ids: torch.Tensor,
                       t5_ids: torch.Tensor, generator: torch.Generator, weight: Optional[torch.Tensor] = None) -> float:
    """One rectified-flow step: x_t = (1 - s) x0 + s noise, target velocity noise - x0 (what the Euler
    scheduler integrates from s = 1 down to 0); squared error weighted per element by `weight`."""
    noise = torch.randn(x0.shape, generator=generator)
    sigma = sample_sigmas(len(x0), generator)
    xt = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
    error = (model(clip_ids, t5_ids, xt, sigma) - (noise - x0)).pow(2)
    loss = error.mean() if weight is None else (weight * error).mean() / weight.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.detach().item()


class Ema:
    """Exponential moving average of a model's parameters (warmed up: short runs are not stuck at init)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p, 1.0 - decay)


def train_text_to_image(pipe, latents_packed: torch.Tensor, weights_packed: torch.Tensor, caption_ids: torch.Tensor,
                        clip_ids: torch.Tensor, t5_ids: torch.Tensor, empty_caption_id: int, steps: int, seed: int,
                        deadline: float, evaluate_every: int = 0) -> tuple[TextToVelocity, dict]:
    """Train transformer AND both text encoders (jointly, from their random init); returns the EMA copy.
    Every `evaluate_every` steps the EMA model is scored on the held-out captions (a learning curve for the
    record; it does not steer training)."""
    model = TextToVelocity(pipe.text_encoder, pipe.text_encoder_2, pipe.transformer).train().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=FLUX_LR, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, FLUX_WARMUP_STEPS))
    ema = Ema(model, EMA_DECAY)
    losses, curve, done = [], [], 0
    with tqdm(total=steps, desc="flux", dynamic_ncols=True, mininterval=5.0) as bar:
        for step in range(steps):
            if time.monotonic() > deadline:
                tqdm.write(f"flux: budget spent after {step} of {steps} steps")
                break
            index = torch.randint(len(latents_packed), (FLUX_BATCH,), generator=generator)
            dropped = torch.rand(FLUX_BATCH, generator=generator) < CAPTION_DROPOUT
            caption = torch.where(dropped, empty_caption_id, caption_ids[index])
            losses.append(flow_matching_step(model, optimizer, latents_packed[index], clip_ids[caption],
                                             t5_ids[caption], generator, weights_packed[index]))
            scheduler.step()
            ema.update(model)
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
            if evaluate_every and done % evaluate_every == 0 and done < steps:
                curve.append({"step": done, **_score_with(pipe, ema.model)})
                tqdm.write(f"flux step {done}: held-out {curve[-1]}")
    return ema.model, {"steps": done, "steps_planned": steps,
                       "final_loss": float(np.mean(losses[-100:])) if losses else None,
                       "loss_curve": [round(float(np.mean(losses[i:i + 100])), 4) for i in range(0, len(losses), 100)],
                       "heldout_curve": curve}


def install(pipe, trained: TextToVelocity) -> None:
    """Put the trained networks into the pipeline, frozen (eval mode, no grad)."""
    pipe.register_modules(text_encoder=_frozen(trained.text_encoder), text_encoder_2=_frozen(trained.text_encoder_2),
                          transformer=_frozen(trained.transformer))


def _score_with(pipe, trained: TextToVelocity) -> dict:
    live = TextToVelocity(pipe.text_encoder, pipe.text_encoder_2, pipe.transformer)
    install(pipe, trained)
    try:
        return evaluate_heldout(pipe)[0]
    finally:
        pipe.register_modules(text_encoder=live.text_encoder, text_encoder_2=live.text_encoder_2,
                              transformer=live.transformer)


# ---- evaluation (also used by tests/test_trained_model.py) ------------------------------------------

EVAL_SEED = 1234  # image i of the held-out set uses EVAL_SEED + i; training never draws from these


def generate(pipe, captions: list[str], seeds: list[int], steps: int = STEPS, **call_kwargs) -> np.ndarray:
    """uint8 (N, 64, 64, 3): one batched pipeline call, one generator per image."""
    output = pipe(captions, num_inference_steps=steps, height=shapes.IMAGE_SIZE_PX, width=shapes.IMAGE_SIZE_PX,
                  generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
                  **{"max_sequence_length": MAX_SEQUENCE_LENGTH, **call_kwargs})
    return np.rint(np.clip(output.images, 0, 1) * 255).astype(np.uint8)


def score(images: np.ndarray, scenes: list[shapes.Scene]) -> dict:
    """Colour accuracy (fg and bg both right), each separately, and shape accuracy (template matching)."""
    colours = [shapes.judge_colours(image) for image in images]
    drawn = [shapes.judge_shape(image) for image in images]
    n = len(scenes)
    return {
        "n": n,
        "colour_accuracy": sum(c == (s.colour, s.background) for c, s in zip(colours, scenes)) / n,
        "foreground_accuracy": sum(c[0] == s.colour for c, s in zip(colours, scenes)) / n,
        "background_accuracy": sum(c[1] == s.background for c, s in zip(colours, scenes)) / n,
        "shape_accuracy": sum(d == s.shape for d, s in zip(drawn, scenes)) / n,
    }


def evaluate_heldout(pipe, steps: int = STEPS, **call_kwargs) -> tuple[dict, np.ndarray]:
    scenes = shapes.heldout_scenes()
    images = generate(pipe, [s.caption() for s in scenes], [EVAL_SEED + i for i in range(len(scenes))], steps,
                      **call_kwargs)
    return score(images, scenes), images


# ---- driver -----------------------------------------------------------------------------------------


def measure_seconds_per_step(step_fn, repeats: int = 3) -> float:
    step_fn()  # first call pays one-off costs
    started = time.perf_counter()
    for _ in range(repeats):
        step_fn()
    return (time.perf_counter() - started) / repeats


def plan_steps(pipe, args, budget_s: float) -> tuple[int, int]:
    """Step counts that fit the budget at the speed measured now, unless given (then they are used as is)."""
    if args.vae_steps and args.flux_steps:
        return args.vae_steps, args.flux_steps
    vae = copy.deepcopy(pipe.vae).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=0.0)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    vae_s = measure_seconds_per_step(lambda: vae_step(vae, opt, rng, gen))
    model = copy.deepcopy(TextToVelocity(pipe.text_encoder, pipe.text_encoder_2, pipe.transformer)).train()
    model.requires_grad_(True)
    topt = torch.optim.AdamW(model.parameters(), lr=0.0)
    x0 = torch.randn(FLUX_BATCH, 64, TRANSFORMER_CONFIG["in_channels"])
    clip_ids, t5_ids = tokenize(pipe, ["a small red circle on a blue background"] * FLUX_BATCH)

    def flux_step():
        flow_matching_step(model, topt, x0, clip_ids, t5_ids, gen)

    flux_s = measure_seconds_per_step(flux_step) * 1.05  # + EMA
    vae_steps = args.vae_steps or max(50, int(VAE_SHARE * budget_s / vae_s))
    flux_steps = args.flux_steps or max(100, int(FLUX_SHARE * budget_s / flux_s))
    print(f"speed now: vae {vae_s:.2f} s/step, flux {flux_s:.2f} s/step -> vae_steps={vae_steps} "
          f"flux_steps={flux_steps} (pass these to repeat this run exactly)", flush=True)
    return vae_steps, flux_steps


def image_ids() -> torch.Tensor:
    """Flux RoPE positions of the 8 x 8 packed latent tokens of a 64 px image."""
    from diffgentor.internals import flux_latent_image_ids

    return flux_latent_image_ids(shapes.IMAGE_SIZE_PX // 8)


def save(pipe, out: pathlib.Path) -> int:
    """fp16 save_pretrained (loads as fp32 with dtype=torch.float32); returns the folder's size in bytes."""
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    pipe.to(torch.float32)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffgentor.testbed.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the diffusers pipeline")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for the whole run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=None, help="default: what fits the budget")
    parser.add_argument("--flux-steps", type=int, default=None, help="default: what fits the budget")
    parser.add_argument("--dataset-size", type=int, default=DATASET_SIZE, help="pre-encoded training images")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; on a machine shared with other jobs 1 is often faster than 2")
    parser.add_argument("--evaluate-every", type=int, default=0, help="score the held-out set every N flux steps")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    budget_s = args.minutes * 60.0
    pipe = build_pipeline(args.seed)
    pipe.set_progress_bar_config(disable=True)
    vae_steps, flux_steps = plan_steps(pipe, args, budget_s - (time.monotonic() - started))
    record: dict[str, Any] = {
        "seed": args.seed, "threads": args.threads, "minutes": args.minutes, "dataset_size": args.dataset_size,
        "params": {name: param_count(getattr(pipe, name))
                   for name in ("transformer", "vae", "text_encoder", "text_encoder_2")},
        "versions": {"torch": torch.__version__},
        "settings": {"vae_batch": VAE_BATCH, "vae_lr": VAE_LR, "flux_batch": FLUX_BATCH, "flux_lr": FLUX_LR,
                     "ema_decay": EMA_DECAY, "foreground_loss_weight": FOREGROUND_LOSS_WEIGHT,
                     "caption_dropout": CAPTION_DROPOUT, "max_sequence_length": MAX_SEQUENCE_LENGTH},
    }
    print(f"params: {record['params']}", flush=True)

    vae_deadline = started + VAE_SHARE * budget_s + 60
    record["vae"] = train_vae(pipe.vae, vae_steps, args.seed, vae_deadline)
    rng = np.random.default_rng(args.seed + 100)
    scenes = [shapes.sample_scene(rng) for _ in range(args.dataset_size)]
    images = shapes.render_batch(scenes)
    latents = encode_images(pipe.vae, images)
    record["vae"].update(set_latent_scaling(pipe.vae, latents))
    record["vae"]["reconstruction_psnr_db"] = round(reconstruction_psnr_db(pipe.vae, images[:256]), 2)
    record["vae"]["latent_std_after_scaling"] = round(float(latents.std()) * pipe.vae.config.scaling_factor, 4)
    print(f"vae: {record['vae']}", flush=True)

    scaled = (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    captions = [""] + all_train_captions()  # "" (id 0): the dropped caption
    clip_ids, t5_ids = tokenize(pipe, captions)
    caption_index = {c: i for i, c in enumerate(captions)}
    caption_ids = torch.tensor([caption_index[s.caption()] for s in scenes])
    weights = foreground_weights(scenes, latents.shape[-1]).expand_as(latents)
    flux_deadline = started + (VAE_SHARE + FLUX_SHARE) * budget_s
    trained, record["flux"] = train_text_to_image(pipe, pack(scaled), pack(weights.contiguous()), caption_ids,
                                                  clip_ids, t5_ids, 0, flux_steps, args.seed, flux_deadline,
                                                  args.evaluate_every)
    install(pipe, trained)

    record["shipped_bytes"] = save(pipe, args.out)
    from diffusers import DiffusionPipeline

    reloaded = DiffusionPipeline.from_pretrained(args.out, dtype=torch.float32, use_safetensors=True)
    reloaded.set_progress_bar_config(disable=True)
    record["heldout"], heldout_images = evaluate_heldout(reloaded)
    record["train_wall_s"] = round(time.monotonic() - started, 1)
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    shapes.save_grid(heldout_images, args.out.parent / f"{args.out.name}-heldout.png")
    print(json.dumps({k: record[k] for k in ("heldout", "shipped_bytes", "train_wall_s")}), flush=True)


if __name__ == "__main__":
    main()
