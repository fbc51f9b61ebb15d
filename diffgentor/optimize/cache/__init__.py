"""Cache acceleration (`+cache=<option>`): skip denoiser work that barely changes between steps.

One module per technique (deep_cache, first_block_cache, pab, faster_cache, taylor_seer, cache_dit,
mag_cache), each a Settings dataclass plus an Optimizer subclassing CacheOptimizer directly, whose `install`
builds its own config (diffusers' hook config, DeepCache's helper, cache-dit's) and returns its own remover.
What they share, by composition:

- base.py: the cache Optimizer (find the denoiser, measure, build the evidence, remove again);
- counting.py: the proof: multiply-accumulates the denoiser's blocks really ran vs. would have run;
- context.py: the denoising loop as the denoiser sees it (generations, steps, timestep), and the
  `cache_context` that SD3/PixArt pipelines do not set around their denoiser call in diffusers 0.42;
- diffusers_hooks.py: installing diffusers' cache hooks on any DiT, CacheMixin or not (install_hook_cache,
  returning the remover), and the tag and conflicts those caches declare;
- joint_blocks.py: SD3's last block made to return tensors only, so FirstBlockCache can difference it.
"""
