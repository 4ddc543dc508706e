"""The run's `manifest.json`: library version, model and options, checked when a run is resumed."""

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

MANIFEST = "manifest.json"


def read_manifest(out_dir: Path) -> Optional[Dict[str, Any]]:
    r"""The manifest of the run in `out_dir`, or `None` when there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_manifest(out_dir: Path, manifest: Dict[str, Any]) -> None:
    r"""Write `manifest.json` atomically (temp file, then renamed into place)."""
    path = Path(out_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{os.getpid()}-{MANIFEST}")
    temp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, path)


def check_same_options(previous: Dict[str, Any], options: Dict[str, Any], out_dir: Path) -> None:
    r"""
    Refuse to resume a run with other options: its finished rows would not match the new ones.

    Raises:
        `ValueError`: naming the options that differ.
    """
    before = previous.get("options", {})
    changed = [
        f"{key}={before.get(key)!r} before, {options.get(key)!r} now"
        for key in sorted(set(before) | set(options))
        if before.get(key) != options.get(key)
    ]
    if changed:
        raise ValueError(
            f"{str(out_dir)!r} holds a run made with other options ({'; '.join(changed)}): pass the same options to "
            "resume it, or restart=True (--restart) to discard it and start again"
        )
