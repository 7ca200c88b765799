"""The house's layers (pyproject.toml [tool.importlinter]) hold: checked with import-linter itself."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_layer_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 kept, 0 broken" in done.stdout


def _package_sources():
    for path in sorted((REPO / "vlm_aug").rglob("*.py")):
        yield path.relative_to(REPO).as_posix(), path.read_text(encoding="utf-8")


def test_facts_have_one_definition():
    """Image extensions live in vlm_aug/formats.py, the tar-member writer in shards/write.py: a second
    copy anywhere in the package (where they drifted apart before) fails here."""
    for name, text in _package_sources():
        if name != "vlm_aug/formats.py":
            assert '"webp"' not in text and "'webp'" not in text, f"{name} lists image extensions"
        if name != "vlm_aug/shards/write.py":
            assert "TarInfo(" not in text, f"{name} writes tar members itself; use shards.write.add_member"
