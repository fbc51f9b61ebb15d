"""`python -m diffgentor ARGS` on every rank of a torchrun, with rank 1's pipeline calls failing after its first
image (tests/test_distributed.py): how a run ends when one rank fails."""

from __future__ import annotations

import os
import sys

import diffgentor.generate as generate_module
from diffgentor.__main__ import main

if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        real_run_batch, calls = generate_module.run_batch, []

        def failing_run_batch(pipe, batch, settings):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("rank 1 ran out of luck")
            return real_run_batch(pipe, batch, settings)

        generate_module.run_batch = failing_run_batch
    sys.argv = ["diffgentor", *sys.argv[1:]]
    main()
