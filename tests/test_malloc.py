"""vlm_aug.malloc: glibc keeps freed blocks for reuse, measured by the page faults of a real process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from vlm_aug.config import Config

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's allocator only")

# a buffer that grows by 64 KB at each step and the old one freed, as a KV cache that torch.cat
# extends at every generated token; in the main thread, or in another one as a Ray actor runs its
# methods (one process each: glibc's thresholds move as it goes)
GROW = """
import json, resource, sys, threading
from vlm_aug.malloc import tune_malloc
done = tune_malloc() if sys.argv[1] == "tune" else "untouched"
def grow():
    buf = bytearray(1 << 20)
    for _ in range(64):
        new = bytearray(len(buf) + (64 << 10))
        new[:len(buf)] = buf
        buf = new
faults = []
def count():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    grow()
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
if sys.argv[2] == "main":
    count()
else:
    thread = threading.Thread(target=count)
    thread.start()
    thread.join()
print(json.dumps({"done": done, "faults": faults[0]}))
"""


def grow(mode: str, where: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run([sys.executable, "-c", GROW, mode, where], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    return json.loads(out.stdout)


def test_tuned_allocator_reuses_freed_blocks_instead_of_faulting_them_in_again():
    pages = (1 << 20) // 4096 + 64 * 16  # the largest buffer once: ~1,300 pages
    for where in ("main", "thread"):
        default, tuned = grow("default", where), grow("tune", where)
        assert tuned["done"] == "glibc: mmap threshold 32 MB, trim threshold 256 MB"
        # glibc by default maps each new, slightly larger buffer afresh: its pages fault in again
        assert default["faults"] > 10 * pages, (where, default)
        assert tuned["faults"] < 4 * pages, (where, tuned)


def test_the_users_own_allocator_settings_are_left_alone():
    kept = grow("tune", "thread", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert kept["done"] == "left alone: GLIBC_TUNABLES set"
    assert kept["faults"] > 10 * ((1 << 20) // 4096)  # nothing was changed: it faults as glibc does


SWITCH = """
import json, sys
from vlm_aug.config import Config
from vlm_aug.executors.local import LocalExecutor
from vlm_aug.pipeline import ShardProcessor
from vlm_aug.progress import RunProgress
from vlm_aug.record import RunContext
config = Config.model_validate({"output": {"path": sys.argv[1]}, "dry_run": True})
said = []
for wanted in sys.argv[2:]:
    processor = ShardProcessor(config, RunContext(config.sha256()))
    report = LocalExecutor(1, malloc=wanted == "on").run([], processor, RunProgress(0, enabled=False))
    said.append(report.workers["local"]["malloc"])
print(json.dumps(said))
"""


def test_the_local_executor_records_the_processs_allocator_and_the_switch_leaves_it_alone(tmp_path):
    config = Config.model_validate({"output": {"path": str(tmp_path / "out")}})
    assert Config.model_validate({**config.model_dump(), "tune_malloc": False}).sha256() == config.sha256()

    def runs(*wanted):
        out = subprocess.run([sys.executable, "-c", SWITCH, str(tmp_path / "out"), *wanted], capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout)

    tuned = "glibc: mmap threshold 32 MB, trim threshold 256 MB"
    assert runs("off", "on") == ["left alone: tune_malloc false", tuned]
    assert runs("on", "off") == [tuned, tuned]  # once tuned, the process stays so: the record says it
