"""Run README command lines in one process (tests/test_readme.py): each as the shell would hand it to
`python -m diffgentor` or `diffgentor`, with sys.argv swapped in. Prints one JSON line per command:
{"command", "exit_code", "stdout", "stderr"}.

Run: python tests/readme_driver.py COMMANDS.json   (a JSON list of argv lists; cwd = where they run)
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def run_one(argv: list[str]) -> int:
    import diffgentor.__main__ as entry
    from diffgentor import cli

    saved = sys.argv
    try:
        if argv[:3] == ["python", "-m", "diffgentor"]:
            sys.argv = ["diffgentor", *argv[3:]]
            entry.main()
        elif argv[0] == "diffgentor":
            cli.main(argv[1:])
        elif argv[0] == "torchrun":  # several processes by nature: torch's own launcher, as the shell would
            import subprocess

            return subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv[1:]]).returncode
        else:
            raise ValueError(f"not a diffgentor command: {argv}")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def main() -> None:
    for argv in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = run_one(argv)
            except Exception as exc:  # noqa: BLE001 - reported as the command's failure
                import traceback

                traceback.print_exc()
                code = f"raised {type(exc).__name__}"
        print(json.dumps({"command": argv, "exit_code": code, "stdout": out.getvalue(),
                          "stderr": err.getvalue()}), flush=True)


if __name__ == "__main__":
    main()
