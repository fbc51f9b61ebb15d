"""`+quality=reference`: any run measures its images against references made without optimizations, cached on
disk by what determines them, and a sweep's summary uses those numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from diffgentor.config import resolve_config
from diffgentor.image_quality import Lpips, quality, read_pixels
from diffgentor.prompts import ImageJob
from diffgentor.reference import plan_references, reference_files, reference_folder, reference_key
from diffgentor.run import prepare

from conftest import run_cli

SWEEP = ["-m", "model=tiny-flux", "steps=4", "num_images_per_prompt=2", "threads=1", "benchmark.min_timed_calls=1",
         "+quality=reference", "+cache=none,first_block_cache"]


def test_a_sweep_makes_each_reference_once_and_its_summary_uses_them(tmp_path, testbed_cache):
    result = run_cli([*SWEEP, f"quality.dir={tmp_path / 'refs'}", "hydra.sweep.dir=sweep"], tmp_path,
                     testbed_cache=testbed_cache, env={"DG_FBC_THRESHOLD": "0.5"})  # skips at 4 steps
    assert result.returncode == 0, result.stderr
    none, cached = (json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/run.json")))
    assert none["quality"]["references"]["generated"] == 2 and cached["quality"]["references"]["reused"] == 2
    assert cached["quality"]["references"]["generated"] == 0
    # nothing applied: the images are the references, pixel for pixel
    assert none["quality"]["identical"] is True and none["quality"]["quality_pairs"] == 2
    measured = cached["quality"]
    assert measured["identical"] is False and 20 < measured["psnr_db"] < 80 and len(measured["per_image"]) == 2
    # the same numbers the summary used to compute against the baseline job's images
    folders = sorted(p.parent for p in (tmp_path / "sweep").glob("*/run.json"))
    pixels = [{i: read_pixels(folder / image["file"]) for i, image in enumerate(record["images"])}
              for folder, record in zip(folders, (none, cached))]
    against_baseline = quality(pixels[1], pixels[0], Lpips())
    assert math.isclose(measured["psnr_db"], against_baseline["psnr_db"], rel_tol=1e-5)
    assert math.isclose(measured["ssim"], against_baseline["ssim"], rel_tol=1e-5)
    rows = json.loads((tmp_path / "sweep" / "summary.json").read_text())["rows"]
    assert [row["quality_against"] for row in rows] == ["reference", "reference"]
    assert math.isinf(rows[0]["psnr_db"]) and math.isclose(rows[1]["psnr_db"], measured["psnr_db"])


def test_references_are_keyed_by_what_determines_them(make_config, tmp_path):
    def folder(*overrides: str):
        run_cfg = resolve_config(make_config(["model=tiny-flux", "+quality=reference",
                                              f"quality.dir={tmp_path}", *overrides]))
        prepared = prepare(run_cfg)
        return prepared.references.folder

    assert folder() == folder("prompt=another prompt", "seed=7")  # the prompts are named per image
    assert len({folder(), folder("steps=3"), folder("height=32"), folder("batch_size=2"),
                folder("guidance_scale=1.5")}) == 5


def test_an_image_batched_with_others_has_a_reference_of_its_own():
    one, two = ImageJob(0, "a", 0, None), ImageJob(1, "b", 1, None)
    alone = reference_files(Path("/refs"), [[one], [two]])
    together = reference_files(Path("/refs"), [[one, two]])
    assert alone[0] != together[0] and len(set(together.values())) == 2


def test_an_offloaded_run_without_cached_references_is_refused_before_load(make_config, tmp_path):
    run_cfg = resolve_config(make_config(["model=tiny-flux", "+quality=reference", f"quality.dir={tmp_path}"]))
    prepared = prepare(run_cfg)
    key = reference_key(run_cfg, prepared.source, prepared.plan.target.dtype, "cuda", {})
    planned, problems = plan_references(run_cfg, prepared.source, prepared.plan.target.dtype, "cuda", {},
                                        prepared.job_batches, offloaded=True)
    assert planned.folder == reference_folder(run_cfg, key)
    assert len(problems) == 1 and "1 reference images are not cached yet" in problems[0]
