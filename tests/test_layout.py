"""The README's Layout section is the map a newcomer reads first: it must name every module."""

from __future__ import annotations

import re
from pathlib import Path

import napari_minenet

ROOT = Path(__file__).resolve().parents[1]


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n+```\n(.*?)```", text, flags=re.S | re.M)
    assert match, "README.md has no '## Layout' section with a code block"
    return match.group(1)


def test_readme_layout_names_every_module():
    package = Path(napari_minenet.__file__).parent
    modules = sorted(p.name for p in package.glob("*.py") if p.name != "__init__.py")
    assert len(modules) > 20  # the package itself, not an empty folder
    block = _layout_block()
    named = set(re.findall(r"[\w]+\.(?:py|yaml)\b", block))
    missing = [m for m in modules if m not in named]
    for sub in sorted(d for d in package.iterdir() if (d / "__init__.py").is_file()):
        if f"{sub.name}/" not in block:
            missing.append(f"{sub.name}/")
        missing += [f"{sub.name}/{m.name}" for m in sorted(sub.glob("*.py")) if m.name not in named]
        modules += [m.name for m in sub.glob("*.py")]
    assert not missing, f"README.md's Layout does not list: {missing}"
    stale = sorted(n for n in named if n.endswith(".py") and n not in modules)
    assert not stale, f"README.md's Layout lists modules that do not exist: {stale}"
