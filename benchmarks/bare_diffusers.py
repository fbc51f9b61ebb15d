"""The least a tool can do for one image: import, from_pretrained, one call, save the PNG (benchmarks/startup.py).

Same folder, prompt, seed, steps, size and guidance as `python -m diffgentor` on shapes-flux, so the pixels
can be compared. Run: python benchmarks/bare_diffusers.py FOLDER OUT.png
"""

import sys
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

folder, out = sys.argv[1], Path(sys.argv[2])
pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
pipe.set_progress_bar_config(disable=True)
image = pipe("a small red circle on a blue background", num_inference_steps=28, guidance_scale=1.0, height=64,
             width=64, max_sequence_length=72, generator=torch.Generator("cpu").manual_seed(0)).images[0]
out.parent.mkdir(parents=True, exist_ok=True)
image.save(out)
