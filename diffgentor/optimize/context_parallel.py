"""Context parallelism (`+parallel=ulysses | ring` under torchrun): one image across several GPUs.

diffusers' own engine does it (`ModelMixin.enable_parallelism` with a `ContextParallelConfig`): the denoiser's
token sequence is split across the ranks by the model's `_cp_plan`, attention exchanges what it needs
(Ulysses: an all-to-all over heads; Ring: key/value blocks passed around, partial results merged by their
log-sum-exp), and the output is gathered. Every rank runs the same prompts and seeds; rank 0 writes the images
and run.json (run.py). This is the slot the product document's compatibility matrix calls "xDiT".

Refused before load where it cannot work: a single process (no ranks to split across), a degree other than
the world size, a family without a context-parallel plan, an attention backend without context-parallel
support (Ring also needs one that returns the log-sum-exp: flash or sage, CUDA only), heads or token counts
the degree does not divide, and caches, compile and offloading (not tested together yet). The evidence,
measured in the evidence pass, is the sequence length the denoiser's output projection saw on this rank
against the gathered one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from diffgentor.errors import UnsupportedError
from diffgentor.optimize.base import Conflict, Optimizer
from diffgentor.optimize.registry import register

#: Attention options (attention.py's BACKENDS) whose kernels return the log-sum-exp Ring attention merges by
#: (diffusers 0.42: native SDPA raises "does not support return_lse=True", xformers too).
RING_ATTENTION = ("flash", "sage")
#: Families whose text sequence length depends on the prompt (no padding to a fixed length): split with
#: diffusers' uneven ("anything") sharding. Measured: tiny-qwenimage with 2 ranks and even sharding fails
#: "Tensor size along dimension to be sharded must be divisible by mesh size"; uneven matched to 2.3e-6.
UNEVEN_TEXT_FAMILIES = frozenset({"qwenimage"})
#: The FLUX pipeline's default `max_sequence_length` (FluxPipeline.__call__), its padded T5 length.
FLUX_TEXT_TOKENS = 512
UNTESTED = "not tested together yet; run them as separate jobs of a sweep"


@dataclass
class ParallelSettings:
    """One image split across the ranks of a torchrun launch (diffusers' context parallelism):

    - `ulysses`: every rank holds 1/N of the tokens; attention swaps heads for tokens with an all-to-all.
      Needs the heads divisible by N; works with the native (SDPA), flash and sage backends.
    - `ring`: every rank holds 1/N of the tokens; key/value blocks travel around the ranks and partial
      attention is merged by its log-sum-exp. Needs +attention=flash or +attention=sage (CUDA).
    - `degree`: ranks one image is split across; null (default): all of them (the world size).
    """

    name: str = "ulysses"
    degree: Optional[int] = None


@dataclass(frozen=True)
class ParallelChoice:
    """What the plan decided: the mode, the degree and the attention backend it runs on."""

    mode: str
    degree: int
    attention: str
    #: diffusers' uneven ("anything") sharding: token counts that vary with the prompt.
    uneven_shards: bool


def _world_size() -> int:
    """The ranks of this launch (torchrun's WORLD_SIZE), 1 for a single process."""
    from diffgentor.distributed import world_from_env

    world = world_from_env()
    return world.size if world is not None else 1


@register
class ContextParallel(Optimizer):
    name = "context_parallel"
    stage = "parallel"
    config_group = "parallel"
    Settings = ParallelSettings
    families = frozenset({"flux", "qwenimage"})
    refused_because = ("diffusers 0.42 has a context-parallel plan (_cp_plan) for these image denoisers only "
                       "(FLUX, Qwen-Image); split the images across ranks instead (torchrun without +parallel)")
    conflicts = (
        Conflict("cache", "context_parallel", "error", f"a cache with context parallelism is {UNTESTED}"),
        Conflict("compile", "context_parallel", "error", f"torch.compile with context parallelism is {UNTESTED}"),
        *(Conflict(offload, "context_parallel", "error",
                   "context parallelism keeps the whole denoiser on each rank's GPU; drop +memory")
          for offload in ("model_cpu_offload", "sequential_cpu_offload", "group_offload")),
        Conflict("layerwise_casting", "context_parallel", "error",
                 f"layerwise casting with context parallelism is {UNTESTED}"),
    )

    @classmethod
    def select(cls, run_cfg: Any) -> Optional[ParallelChoice]:
        group = cls.active_group(run_cfg)
        if group is None:
            return None
        attention = cls.active_group(run_cfg, "attention")
        return ParallelChoice(mode=group.name, degree=group.degree or _world_size(),
                              attention=attention.name if attention is not None else "native",
                              uneven_shards=False)

    def tags(self) -> set[str]:
        return {self.name, f"context_parallel:{self.settings.mode}"}

    def check(self, family: str) -> None:
        from dataclasses import replace

        choice, world = self.settings, _world_size()
        if choice.mode not in ("ulysses", "ring"):
            raise UnsupportedError(f"parallel={choice.mode} is unknown; use +parallel=ulysses or +parallel=ring")
        if world < 2:
            raise UnsupportedError(
                f"parallel={choice.mode} splits one image across several processes and this run is one: launch "
                f"it with `torchrun --nproc_per_node={max(choice.degree, 2)} -m diffgentor ...`")
        if choice.degree != world:
            raise UnsupportedError(
                f"parallel.degree={choice.degree} with {world} ranks: the degree must be the world size (data "
                "parallel across groups of ranks is not built); set parallel.degree=null")
        self._check_attention(choice)
        self.settings = replace(choice, uneven_shards=family in UNEVEN_TEXT_FAMILIES)

    @staticmethod
    def _check_attention(choice: ParallelChoice) -> None:
        from diffgentor.internals import context_parallel_backends
        from diffgentor.optimize.attention import BACKENDS

        backend = BACKENDS.get(choice.attention)
        if backend is None:
            return  # an unknown option: the attention step refuses it
        if choice.mode == "ring" and choice.attention not in RING_ATTENTION:
            raise UnsupportedError(
                f"parallel=ring merges partial attention by its log-sum-exp, which the {choice.attention} backend "
                f"does not return; add +attention={' or +attention='.join(RING_ATTENTION)} (CUDA), or use "
                "+parallel=ulysses")
        capable = context_parallel_backends()
        if backend.diffusers_name not in capable:
            fits = sorted(name for name, b in BACKENDS.items() if b.diffusers_name in capable)
            raise UnsupportedError(f"attention={choice.attention} has no context-parallel support in diffusers; "
                                   f"use one of: {', '.join(fits)}")

    def shape_problems(self, denoiser_config: dict, image_tokens: int, text_tokens: Optional[int]) -> list[str]:
        """What the degree does not divide (heads, image tokens, padded text tokens); uneven sharding takes
        any counts."""
        choice = self.settings
        if choice.uneven_shards:
            return []
        problems = []
        heads = denoiser_config.get("num_attention_heads")
        if choice.mode == "ulysses" and isinstance(heads, int) and heads % choice.degree:
            problems.append(f"parallel=ulysses with degree {choice.degree}: the denoiser's {heads} attention heads "
                            "do not divide among the ranks; use a degree that divides them")
        for what, tokens, fix in (("image", image_tokens, "height/width"),
                                  ("text", text_tokens, "max_sequence_length")):
            if tokens is not None and tokens % choice.degree:
                problems.append(f"parallel={choice.mode} with degree {choice.degree}: {tokens} {what} tokens do not "
                                f"split evenly across the ranks; choose a {fix} whose tokens the degree divides")
        return problems

    def check_model(self, source: Any, run_cfg: Any) -> list[str]:
        from diffgentor.pipeline import planned_component_config, planned_size_factor

        factor = planned_size_factor(source)
        image_tokens = (run_cfg.height // factor) * (run_cfg.width // factor)
        text_tokens = None
        if self.target.family == "flux":
            text_tokens = (run_cfg.max_sequence_length or run_cfg.model.call_kwargs.get("max_sequence_length")
                           or FLUX_TEXT_TOKENS)
        return self.shape_problems(planned_component_config(source, "transformer"), image_tokens, text_tokens)

    def apply(self, pipe: Any) -> None:
        from diffgentor.internals import enable_context_parallel
        from diffgentor.optimize.targets import denoiser_of

        _, model = denoiser_of(pipe)
        problems = self.shape_problems(dict(model.config), 0, None)  # a hub model's config is read only now
        if problems:
            raise UnsupportedError(problems[0])
        choice = self.settings
        enable_context_parallel(model, choice.mode, choice.degree, choice.uneven_shards)
        self._seen: dict[str, int] = {}
        self._handles: list = []

    def instrument(self, pipe: Any) -> None:
        """For the evidence pass: the sequence length entering the output projection (this rank's share)
        and leaving it (gathered from every rank)."""
        from diffgentor.optimize.targets import denoiser_of

        _, model = denoiser_of(pipe)
        projection = model.proj_out

        def before(module: Any, args: tuple) -> None:
            self._seen["tokens_per_rank"] = int(args[0].shape[1])

        def after(module: Any, args: tuple, output: Any) -> None:
            self._seen["tokens_gathered"] = int(output.shape[1])

        self._handles = [projection.register_forward_pre_hook(before), projection.register_forward_hook(after)]

    def uninstrument(self, pipe: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def evidence(self, pipe: Any) -> dict:
        if not self._seen:
            raise UnsupportedError("context_parallel: no evidence pass ran, so no split was measured")
        per_rank, gathered = self._seen["tokens_per_rank"], self._seen["tokens_gathered"]
        if per_rank >= gathered:
            raise UnsupportedError(f"context_parallel: the denoiser saw all {gathered} tokens on this rank: nothing "
                                   "was split")
        return {"mode": self.settings.mode, "degree": self.settings.degree, "image_tokens_per_rank": per_rank,
                "image_tokens": gathered, "measured_in": "evidence pass"}
