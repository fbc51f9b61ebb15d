#!/usr/bin/env bash
# The prepared GPU check (issue 11): run once on a lent GPU machine, keep what it prints (the README's GPU
# table comes from it). Full-size FLUX.1-dev architecture with random bf16 weights (no download), 1024x1024,
# 28 steps, 2 timed images per row after a warmup: bf16 eager, +fuse_qkv, +flash/flash_3/sage where
# installed, +regional compile, +first_block_cache, all combined. Sized for under 8 minutes on an H100/H200.
#   bash benchmarks/gpu.sh            (from the repository root; needs torch with CUDA and the project installed)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)"
python -m pip list 2>/dev/null | grep -iE "^(torch|diffusers|flash.attn|sageattention|xformers|triton) " || true
python benchmarks/optimizers.py --gpu --images 2 --compile-mode max-autotune-no-cudagraphs
