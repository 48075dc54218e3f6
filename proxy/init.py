"""`coxp init`: a commented starter config from a preset, on stdout or into a new file.

The presets are the example configs themselves, not copies: `local-dev` is what `coxp dev`
writes (config/local-dev.toml is that text), the others ship in the package as links to
config/*.toml, so a change to an example changes the preset.
"""
from __future__ import annotations

import importlib.resources
import os
import sys

PRESETS = ("local-dev", "legacy-api", "staging-hardening")
DEFAULT_PRESET = "local-dev"


def preset_text(name: str) -> str:
    if name == "local-dev":
        from proxy.dev import DevOptions, config_text

        return config_text(DevOptions(upstream="http://127.0.0.1:3000"))
    return importlib.resources.files("proxy").joinpath("presets", f"{name}.toml").read_text(encoding="utf-8")


def run_init(preset: str, output: str | None, force: bool) -> int:
    text = preset_text(preset)
    if output is None:
        sys.stdout.write(text)
        return 0
    if os.path.isdir(output):
        print(f"coxp init: {output} is a directory; give the path of the file to write", file=sys.stderr)
        return 1
    try:
        # "x" refuses an existing file atomically: nothing is overwritten without --force.
        with open(output, "w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        print(f"coxp init: {output} exists; add --force to overwrite it", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"coxp init: cannot write {output}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"coxp init: wrote the {preset} preset to {output}; edit it, then: coxp check -c {output}",
          file=sys.stderr)
    return 0
