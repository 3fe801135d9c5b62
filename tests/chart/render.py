"""Renders charts/regcache like `helm template` and prints the manifests as one JSON list.

    tests/emulator/.venv/bin/python tests/chart/render.py [-f VALUES.yaml]... [--set KEY=VALUE]...
                                                     [--name RELEASE] [--namespace NS]

`-f` and `--set` work as in helm (later ones win; `--set a.b=1,c=x` and repeated `--set`
both work). Defaults: release `regcache`, namespace `regcache-system`. Prints a JSON array of
objects in template order (CRDs under crds/ are not included, as with `helm template`
without `--include-crds`). Exits non-zero, with helm's message on stderr, when rendering fails.

Used by the chart's pytest suite (tests/chart) and by tests that compare the chart's RBAC
with the API calls regcache makes, e.g. `render.py --set replicas=3`.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "regcache"
RELEASE = "regcache"
NAMESPACE = "regcache-system"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge as helm does for -f/--set: maps merge, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_sets(expressions: list[str]) -> dict[str, Any]:
    import helm_python as helm

    values: dict[str, Any] = {}
    for expression in expressions:
        values = merge(values, helm.parse_set_string(expression))
    return values


def render(
    values: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """The chart's objects for these values (merged over values.yaml by helm)."""
    import helm_python as helm

    rendered = helm.Chart.load(str(CHART)).render(
        values or {}, name=name, namespace=namespace, is_install=True
    )
    objects: list[dict[str, Any]] = []
    # helm orders output by template file name; keep that so the output is stable.
    for template in sorted(rendered):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(rendered[template]):
            if doc:
                objects.append(doc)
    return objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--values", action="append", default=[], help="values file")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE[,KEY=VALUE]")
    parser.add_argument("--name", default=RELEASE, help="release name")
    parser.add_argument("--namespace", default=NAMESPACE, help="release namespace")
    args = parser.parse_args(argv)

    values: dict[str, Any] = {}
    for path in args.values:
        values = merge(values, yaml.safe_load(pathlib.Path(path).read_text()) or {})
    try:
        values = merge(values, parse_sets(args.set))
        objects = render(values, name=args.name, namespace=args.namespace)
    except Exception as e:  # helm's errors carry the template and line
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    json.dump(objects, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
