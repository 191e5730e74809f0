"""The repository URL in one place, `[project.urls] Repository` in pyproject.toml, and what is made from it.

The notebooks' Colab install line (in their setup cell) and every "Open in Colab" badge (README and
notebooks) are generated from that URL:

    python d2v_mini/links.py --check          # list every place that disagrees with pyproject.toml (exit 1 if any)
    python d2v_mini/links.py --repoint URL    # a fork: write URL into pyproject.toml, regenerate all (make repoint)

Standard library only, so it also runs as a plain script, without the package's dependencies.

Installed from a wheel (Colab), `repository_url()` reads the same URL from the package metadata.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the source tree (pyproject.toml, README.md, notebooks/)
BRANCH = "main"  # the branch the Colab badges open
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"
EXTRAS = "colab"  # the optional dependencies the notebooks' install line asks for (pyproject.toml)
_URLS_SECTION = re.compile(r"(?ms)^\[project\.urls\][ \t]*\n(.*?)(?=^\[|\Z)")
_REPO_LINE = re.compile(r'(?m)^(Repository[ \t]*=[ \t]*")([^"]*)(")')
_BADGE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                    r"\(https://colab\.research\.google\.com/github/[^)\s]*?/(notebooks/[\w.-]+\.ipynb)\)")
_INSTALL = re.compile(r'%pip install -q "d2v_mini[^"]*"')
_GITHUB = re.compile(r"^https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?$")


def repository_url(root: Path = ROOT) -> str:
    """`[project.urls] Repository` of `root`/pyproject.toml; without a source tree, the installed metadata's."""
    pyproject = Path(root) / "pyproject.toml"
    if pyproject.exists():
        section = _URLS_SECTION.search(pyproject.read_text(encoding="utf-8"))
        line = _REPO_LINE.search(section.group(1)) if section else None
        if not line:
            raise ValueError(f"{pyproject} has no `Repository = \"...\"` under [project.urls]")
        return line.group(2).rstrip("/")
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("d2v_mini").get_all("Project-URL") or []
    except PackageNotFoundError:
        urls = []
    for entry in urls:  # "Repository, https://github.com/..."
        label, _, url = entry.partition(",")
        if label.strip() == "Repository":
            return url.strip().rstrip("/")
    raise ValueError("no source tree and no Repository URL in the installed d2v_mini metadata")


def github_repo(url: str) -> str:
    """'owner/name' of a https://github.com/owner/name URL (ValueError otherwise: Colab opens GitHub repos)."""
    match = _GITHUB.match(url)
    if not match:
        raise ValueError(f"{url!r} is not a GitHub repository URL like https://github.com/OWNER/NAME")
    return f"{match.group(1)}/{match.group(2)}"


def badge(url: str, notebook: str) -> str:
    """The markdown of the "Open in Colab" badge of `notebook` (a path like notebooks/00_overview.ipynb)."""
    return (f"[![Open In Colab]({BADGE_IMG})](https://colab.research.google.com/github/{github_repo(url)}/blob/"
            f"{BRANCH}/{notebook})")


def install_line(url: str) -> str:
    """The notebooks' Colab install line (IPython %pip magic)."""
    return f'%pip install -q "d2v_mini[{EXTRAS}] @ git+{url}"'


def _notebooks(root: Path) -> list[Path]:
    return sorted((Path(root) / "notebooks").glob("[0-9]*.ipynb"))


def _rewrite(text: str, url: str) -> str:
    text = _BADGE.sub(lambda m: badge(url, m.group(1)), text)
    return _INSTALL.sub(lambda m: install_line(url), text)


def check(root: Path = ROOT) -> list[str]:
    """Every place where a badge or install line disagrees with pyproject.toml's URL (empty: all agree)."""
    root = Path(root)
    url = repository_url(root)
    problems = []
    readme = (root / "README.md").read_text(encoding="utf-8")
    for nb in _notebooks(root):
        rel = f"notebooks/{nb.name}"
        if readme.count(badge(url, rel)) != 1:
            problems.append(f"README.md: no (or more than one) Colab badge {badge(url, rel)}")
        sources = ["".join(c["source"]) for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]]
        badges = [m.group(0) for s in sources for m in _BADGE.finditer(s)]
        if badges != [badge(url, rel)]:
            problems.append(f"{rel}: Colab badges {badges}, expected [{badge(url, rel)}]")
        installs = [m.group(0) for s in sources for m in _INSTALL.finditer(s)]
        if installs != [install_line(url)]:
            problems.append(f"{rel}: install lines {installs}, expected [{install_line(url)}]")
    stray = [m.group(0) for m in _BADGE.finditer(readme) if m.group(0) != badge(url, m.group(1))]
    problems += [f"README.md: Colab badge for another repository: {b}" for b in stray]
    return problems


def sync(root: Path = ROOT) -> list[Path]:
    """Regenerate the badges (README, notebooks) and install lines (notebooks) from pyproject.toml's URL.
    Notebooks are rewritten as JSON with indent=1, as nbformat writes them. Returns the files changed."""
    root = Path(root)
    url = repository_url(root)
    changed = []
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if _rewrite(text, url) != text:
        readme.write_text(_rewrite(text, url), encoding="utf-8")
        changed.append(readme)
    for nb in _notebooks(root):
        raw = nb.read_text(encoding="utf-8")
        data = json.loads(raw)
        for cell in data["cells"]:
            lines = cell["source"] if isinstance(cell["source"], list) else [cell["source"]]
            new = [_rewrite(line, url) for line in lines]
            if new != lines:
                cell["source"] = new if isinstance(cell["source"], list) else new[0]
        out = json.dumps(data, indent=1, ensure_ascii=False) + ("\n" if raw.endswith("\n") else "")
        if out != raw:
            nb.write_text(out, encoding="utf-8")
            changed.append(nb)
    return changed


def repoint(url: str, root: Path = ROOT) -> list[Path]:
    """Make `url` the repository (pyproject.toml's [project.urls] Repository) and regenerate everything."""
    url = url.rstrip("/")
    github_repo(url)  # validate before writing anything
    pyproject = Path(root) / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    section = _URLS_SECTION.search(text)
    if section and _REPO_LINE.search(section.group(1)):
        start = section.start(1)
        body = _REPO_LINE.sub(lambda m: f"{m.group(1)}{url}{m.group(3)}", section.group(1), count=1)
        new = text[:start] + body + text[section.end(1):]
    else:
        raise ValueError(f"{pyproject} has no `Repository = \"...\"` under [project.urls]")
    changed = [pyproject] if new != text else []
    pyproject.write_text(new, encoding="utf-8")
    return changed + sync(root)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="d2v_mini/links.py", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="list what disagrees with pyproject.toml; exit 1 if any")
    p.add_argument("--repoint", metavar="URL", help="make URL the repository and regenerate badges / install lines")
    args = p.parse_args(argv)
    if args.repoint:
        changed = repoint(args.repoint)
        print(f"repository: {repository_url()}; rewrote {len(changed)} files: {', '.join(f.name for f in changed)}")
    problems = check()
    for line in problems:
        print(line, file=sys.stderr)
    if args.check or args.repoint:
        print(f"{repository_url()}: {'all badges and install lines agree' if not problems else 'MISMATCHES above'}")
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
