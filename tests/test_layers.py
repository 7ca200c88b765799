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


def test_a_worker_with_its_models_loaded_does_not_import_pandas():
    """pandas (~50 MB per process) comes only with reading an output's tables (`pyarrow.dataset`):
    a Ray actor or local worker that loads the models and writes shards never needs it."""
    script = """
import sys
import vlm_aug.executors.ray_actor, vlm_aug.shards.write
from vlm_aug.config import load_config
from vlm_aug.paths import configs_dir
from vlm_aug.pipeline import build_stages
for stage in build_stages(load_config(configs_dir() / "demo.yaml")):
    stage.setup()
print(sorted(m for m in ("pandas", "pyarrow.dataset") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
