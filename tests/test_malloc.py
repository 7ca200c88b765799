"""vlm_aug.malloc: glibc keeps freed blocks for reuse and torch's big tensors sit on huge pages, measured
by the page faults of a real process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from vlm_aug.config import Config
from vlm_aug.malloc import HUGE_PAGES, THP_MODE, THP_SWITCH

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
        assert tuned["done"].startswith("glibc: mmap threshold 32 MB, trim threshold 256 MB; ")
        # glibc by default maps each new, slightly larger buffer afresh: its pages fault in again
        assert default["faults"] > 10 * pages, (where, default)
        assert tuned["faults"] < 4 * pages, (where, tuned)


def test_the_users_own_allocator_settings_are_left_alone():
    kept = grow("tune", "thread", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert kept["done"].startswith("glibc left alone: GLIBC_TUNABLES set; ")
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

    tuned = f"glibc: mmap threshold 32 MB, trim threshold 256 MB; {HUGE_PAGES}"
    assert runs("off", "on") == ["left alone: tune_malloc false", tuned]
    assert runs("on", "off") == [tuned, tuned]  # once tuned, the process stays so: the record says it


# a batch's processor tensor as the hf engine makes it (SmolVLM, 32 tiles of 512 px: 100 MB of float32),
# above any glibc threshold, so mapped afresh each time; its page faults counted, and what tune_malloc
# says; "early": a tensor made before tune_malloc, as in a process that ran torch before the pipeline
BIG = """
import json, os, resource, sys
import torch
early = torch.ones(4 << 20, dtype=torch.uint8) if sys.argv[2] == "early" else None
from vlm_aug.malloc import tune_malloc
done = tune_malloc() if sys.argv[1] == "tune" else "untouched"
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    x = torch.zeros(25_000_000)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    del x
print(json.dumps({"done": done, "faults": min(faults), "env": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def big(mode: str, when: str = "first", **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != THP_SWITCH}
    out = subprocess.run([sys.executable, "-c", BIG, mode, when], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    return json.loads(out.stdout)


def kernel_huge_pages() -> bool:
    try:
        return "[never]" not in open(THP_MODE, encoding="ascii").read()
    except OSError:
        return False


@pytest.mark.skipif(not kernel_huge_pages(), reason="the kernel's transparent huge pages are off")
def test_big_tensors_go_on_huge_pages_and_the_environment_is_given_back():
    pages = 100_000_000 // 4096  # 24,414 pages of 4 KB
    default, tuned = big("default"), big("tune")
    assert default["faults"] > pages / 4, default  # a fault per 4 or 8 KB (12,207 here)
    assert tuned["done"].endswith(f"; {HUGE_PAGES}"), tuned
    assert tuned["faults"] < pages / 20, tuned  # one per 2 MB page, ~50, where the kernel has them free
    assert tuned["env"] is None  # child processes start with the environment the user gave


@pytest.mark.skipif(not kernel_huge_pages(), reason="the kernel's transparent huge pages are off")
def test_huge_pages_are_left_alone_when_the_user_chose_or_torch_had_started():
    pages = 100_000_000 // 4096
    off = big("tune", **{THP_SWITCH: "0"})
    assert off["done"].endswith(f"; huge pages left alone: {THP_SWITCH}=0 set") and off["env"] == "0"
    assert off["faults"] > pages / 4, off
    late = big("tune", "early")
    assert late["done"].endswith(f"; huge pages left alone: torch had allocated in this process before; set "
                                 f"{THP_SWITCH}=1 before the first tensor for them"), late
    assert late["faults"] > pages / 4, late  # and indeed: torch had read the switch already
