"""A small installable plug-in package for the plug-in tests: its source tree, built on the fly."""
from __future__ import annotations

from pathlib import Path

#: the plug-in's certifier: IBP under another name, so its certificates can be checked against the
#: built-in IBP's on the same run
TOY_CERTIFIER = "toy-ibp"


def write_plugin_source(root: Path, *, dist: str = "robust-frontier-toy-plugin", module: str = "rf_toy_plugin",
                        body: str | None = None) -> Path:
    """A source tree with pyproject.toml declaring one ``robust_frontier.certifiers`` entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(f'''[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1"

[project.entry-points."robust_frontier.certifiers"]
toy = "{module}:register"

[tool.setuptools]
packages = ["{module}"]
''')
    (root / module).mkdir(exist_ok=True)
    (root / module / "__init__.py").write_text(body if body is not None else f'''
def register():
    from harness.certifiers.bound_methods import IBP
    from harness.certifiers.registry import register as add

    class ToyIBP(IBP):
        name = "{TOY_CERTIFIER}"
        title = "IBP, from a plug-in"

    add(ToyIBP())
''')
    return root


def write_dist_info(site: Path, *, dist: str, module: str, body: str, group: str = "robust_frontier.certifiers",
                    entry: str | None = None) -> None:
    """What an install leaves in site-packages (the module and its .dist-info with entry_points.txt),
    written directly: for fast tests of the loader."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(body)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\ntoy = {entry or module + ':register'}\n")
