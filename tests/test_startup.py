"""What answers without the model imports neither torch nor diffusers (issue 13): --help, a typo, --cfg job,
the seed CLI's help and reading every optimizer's declaration. Timings are benchmarks/startup.py's job."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

#: Runs `python -m diffgentor ARGS` in-process, then says whether torch / diffusers were imported.
PROBE = """
import sys
sys.argv = ["diffgentor", *sys.argv[1:]]
try:
    from diffgentor.__main__ import main
    main()
except SystemExit:
    pass
finally:
    print("imported:", "torch" in sys.modules, "diffusers" in sys.modules, file=sys.stderr)
"""


def _probe(args: list[str], code: str = PROBE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["stepz=2"], ["+cache=first_block_cache", "--cfg", "job"],
                                  ["--help", "+cache=pab", "+compile=regional"], ["--help", "stepz=2"]])
def test_answers_without_the_model_import_no_torch(args):
    result = _probe(args)
    assert result.stderr.strip().endswith("imported: False False"), result.stderr[-2000:]


def test_a_typo_next_to_help_is_one_message_not_a_traceback():
    result = subprocess.run([sys.executable, "-m", "diffgentor", "--help", "stepz=2"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert "Could not override 'stepz'" in result.stderr and "Traceback" not in result.stderr


def test_help_says_what_hydra_would(tmp_path):
    """The one-composition help (app_help.py) prints Hydra's own help text; a Hydra flag (here an empty
    --config-dir) sends --help down Hydra's path."""
    ours = subprocess.run([sys.executable, "-m", "diffgentor", "--help", "+cache=pab", "steps=3"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    hydra = subprocess.run([sys.executable, "-m", "diffgentor", "--help", "+cache=pab", "steps=3",
                            "--config-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ours.returncode == hydra.returncode == 0, ours.stderr + hydra.stderr
    assert "cache: cache_dit, deep_cache" in ours.stdout and "steps: 3" in ours.stdout
    assert ours.stdout == hydra.stdout


def test_seed_cli_help_and_support_import_no_torch():
    code = ("import sys\nfrom diffgentor.cli import main\nfor argv in (['t2i', '--help'], ['support']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('imported:', 'torch' in sys.modules, 'diffusers' in sys.modules, file=sys.stderr)")
    result = _probe([], code)
    assert "cache_dit" in result.stdout and result.stderr.strip().endswith("imported: False False"), result.stderr


def test_every_optimizer_declaration_reads_without_torch():
    code = ("import sys\nfrom diffgentor.optimize.registry import OPTIMIZER_MODULES, load_all\n"
            "optimizers = load_all()\nfrom diffgentor.optimize.compat import family_support, conflicts\n"
            "family_support(); conflicts()\n"
            "print(len(OPTIMIZER_MODULES), len(optimizers), 'torch' in sys.modules, 'diffusers' in sys.modules)")
    result = _probe([], code)
    modules, optimizers, torch_imported, diffusers_imported = result.stdout.split()
    assert int(optimizers) >= int(modules) > 10
    assert (torch_imported, diffusers_imported) == ("False", "False"), result.stderr
