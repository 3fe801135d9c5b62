"""Shared helpers for the chart tests: paths, rendering, and running the validators."""
from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import render as render_module  # noqa: E402  (needs the path above)

CHART = render_module.CHART
CRD = ROOT / "crds" / "imagerepositorywatches.regcache.io.yaml"
CHART_CRD = CHART / "crds" / "imagerepositorywatches.regcache.io.yaml"
EXAMPLES = ROOT / "examples"
BIN = pathlib.Path(sys.executable).parent
KUBE_VERSION = "1.34"


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return render_module.render(values, **kwargs)


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in kinds(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kubernetes_validate(objects: list[dict[str, Any]], tmp: pathlib.Path) -> tuple[int, str]:
    """Runs `kubernetes-validate --strict -k 1.34` on the objects, one file each."""
    files = []
    for i, obj in enumerate(objects):
        path = tmp / f"{i:02d}-{obj['kind']}-{obj['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        files.append(str(path))
    out = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", KUBE_VERSION, *files],
        capture_output=True,
        text=True,
    )
    return out.returncode, out.stdout + out.stderr
