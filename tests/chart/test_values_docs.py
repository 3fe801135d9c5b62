"""Every value of the chart is documented: a `# --` comment in values.yaml and a row in the
README's values table (with the same default), and the README names no value that is gone."""
from __future__ import annotations

import json
import re
import subprocess

import yaml

from conftest import BIN, CHART, EXAMPLES

KEY = re.compile(r"^(\s*)([A-Za-z][\w-]*):")


def documented_keys(text: str) -> list[str]:
    """Dotted paths of the keys with a `# --` comment block right above them. The keys
    inside a documented key's value (e.g. podSecurityContext.runAsUser) are its default,
    not values of their own."""
    stack: list[tuple[int, str]] = []
    comment_indent = None  # indent of the `# --` comment block above the current line
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            if stripped.startswith("# --"):
                comment_indent = indent
            continue
        m = KEY.match(line)
        if not m:
            if not stripped or not stripped.startswith("-"):
                comment_indent = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if comment_indent == indent and not any(k in out for k in prefixes(stack)):
            out.append(".".join([k for _, k in stack] + [m.group(2)]))
        stack.append((indent, m.group(2)))
        comment_indent = None
    return out


def prefixes(stack):
    keys = [k for _, k in stack]
    return [".".join(keys[: i + 1]) for i in range(len(keys))]


def undocumented(text: str) -> list[str]:
    """Leaves of the values that no documented key covers."""
    values = yaml.safe_load(text)
    documented = set(documented_keys(text))
    missing = []

    def walk(node, path):
        if path and ".".join(path) in documented:
            return
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, path + [key])
        else:
            missing.append(".".join(path))

    walk(values, [])
    return missing


def lookup(values, path):
    for key in path.split("."):
        values = values[key]
    return values


def readme_rows() -> dict[str, str]:
    rows = {}
    for line in (CHART / "README.md").read_text().splitlines():
        m = re.match(r"^\| `([^`]+)` \| `(.*)` \| (.+) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


VALUES_TEXT = (CHART / "values.yaml").read_text()


def test_every_value_has_a_comment():
    assert undocumented(VALUES_TEXT) == []
    # The walk saw the whole file: it found the values the chart is known to have.
    keys = documented_keys(VALUES_TEXT)
    assert {"replicas", "memcached.memoryMiB", "networkPolicy.memcachedFrom", "podSecurityContext"} <= set(keys)
    assert "podSecurityContext.runAsUser" not in keys


def test_the_checker_finds_an_undocumented_value():
    text = "# -- documented\na: 1\nb:\n  # -- documented\n  c: 2\n  d: 3\n# a plain comment\ne: {}\n"
    assert undocumented(text) == ["b.d", "e"]


def test_every_value_is_in_the_readme_with_its_default():
    rows = readme_rows()
    values = yaml.safe_load(VALUES_TEXT)
    keys = documented_keys(VALUES_TEXT)
    assert sorted(set(keys) - set(rows)) == [], "values missing from charts/regcache/README.md"
    assert sorted(set(rows) - set(keys)) == [], "README rows for values that do not exist"
    for key in keys:
        assert json.loads(rows[key]) == lookup(values, key), f"README default of {key} differs"


def test_yaml_files_pass_yamllint(tmp_path):
    config = tmp_path / "yamllint.yaml"
    # The chart's templates are not YAML until rendered; values, Chart.yaml and examples are.
    config.write_text("extends: default\nrules:\n  line-length: {max: 120}\n  document-start: disable\n"
                      "  truthy: {check-keys: false}\n")
    files = [CHART / "values.yaml", CHART / "Chart.yaml", *sorted(EXAMPLES.rglob("*.yaml"))]
    out = subprocess.run([str(BIN / "yamllint"), "-c", str(config), "-f", "parsable", *map(str, files)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
