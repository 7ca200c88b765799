"""The allocators of a process that runs models on the CPU, set by `tune_malloc()`: glibc's thresholds,
and torch's big tensors on transparent huge pages.

By default glibc gives a freed block above its mmap threshold (128 KB at first, raised as it sees
bigger blocks freed) back to the kernel at once, and trims free memory off the top of each heap.
A model's next batch allocates tensors of the same sizes again, and the kernel faults every page
back in, zeroed. Fixing the threshold at 32 MB (the most glibc accepts) and trimming only past
256 MB of free memory at a heap's top keeps those blocks for reuse.

Measured on this project's 2-core KVM machine with the scene models (docs/performance.md): a Ray
actor, whose models run in one of Ray's threads (a glibc arena of its own), took 250-470 thousand
page faults on 2,048 samples, and 115-175 thousand with the thresholds fixed; over 5 alternating
rounds it ran 137.5 samples/s by median against 134.4. A page fault costs ~2 us here (a bare model
loop with the mmap threshold pinned at 128 KB took 3 million of them and twice the time). The local
executor, whose models run in the main thread, faults less either way (31-86 thousand, 22-24
thousand fixed). The price: freed memory stays in the process for reuse instead of going back to
the kernel; the peak of a local run was 20-50 MB higher (1.15 GB).

Left alone (and said so): not glibc (macOS, musl), or the user chose already (`MALLOC_*_` or
`GLIBC_TUNABLES` in the environment, or another allocator in `LD_PRELOAD`), or `tune_malloc: false`
in the config (a process an earlier run tuned stays tuned; the record says so).

Huge pages: torch's CPU allocator puts a tensor of 2 MB or more on transparent huge pages when
`THP_MEM_ALLOC_ENABLE=1` is in the environment at its first allocation (it aligns the block and asks
the kernel with `madvise`). Tensors that big are mapped afresh for every batch whatever glibc's
thresholds (32 MB is glibc's upper bound), so each costs a fault per 4 KB page; a 2 MB page faults
once. The `hf` engine's image processor makes two such tensors per generate call (SmolVLM's 512 px
tiles for 32 images: 100 MB of pixels and their mask): on this machine `torch.zeros` of them took
27 ms a call with 4 KB pages and 5.5 ms with huge pages; SmolVLM's processor took 3.6 ms a sample
instead of 5.3 (median of 4 alternating rounds), and the whole host path on the realistic JPEGs
(decode, both processors) ran 1.14-1.23x faster on one thread, within the noise on two
(docs/performance.md, "Huge pages"). Left alone
(and said so): `THP_MEM_ALLOC_ENABLE` already set by the user, the kernel's transparent huge pages
off (`never`) or absent, or torch already allocating in this process (the setting is read once);
the variable is taken out of the environment again after torch has read it, so child processes
start as the user started this one.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 32 * 2**20  # glibc's upper bound for it (half its 64 MB heap size)
TRIM_THRESHOLD = 256 * 2**20
USER_CHOICES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                "GLIBC_TUNABLES")

_outcome: str | None = None


def tune_malloc(wanted: bool = True) -> str:
    """Fix glibc's mmap and trim thresholds and put torch's big tensors on huge pages for this process
    (once), if `wanted` (config `tune_malloc`); call it before the process's first tensor.
    -> the process's state, for the record: it stays tuned once tuned, whatever a later run asks."""
    global _outcome
    if wanted and _outcome is None:
        _outcome = f"{_glibc()}; {_huge_pages()}"
    return _outcome or "left alone: tune_malloc false"


def _glibc() -> str:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "glibc left alone: not glibc"
    chosen = [name for name in USER_CHOICES if name in os.environ]
    preload = os.environ.get("LD_PRELOAD", "")
    if "malloc" in preload:  # jemalloc, tcmalloc, mimalloc: the user picked an allocator
        chosen.append(f"LD_PRELOAD={preload}")
    if chosen:
        return f"glibc left alone: {', '.join(chosen)} set"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "glibc left alone: mallopt not found"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "glibc left alone: mallopt refused"
    return f"glibc: mmap threshold {MMAP_THRESHOLD >> 20} MB, trim threshold {TRIM_THRESHOLD >> 20} MB"


THP_SWITCH = "THP_MEM_ALLOC_ENABLE"  # torch's (c10/core/alloc_cpu.cpp): madvise(MADV_HUGEPAGE) at >= 2 MB
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
HUGE_PAGES = "torch: tensors of 2 MB or more on transparent huge pages"


def _huge_pages() -> str:
    if THP_SWITCH in os.environ:
        return f"huge pages left alone: {THP_SWITCH}={os.environ[THP_SWITCH]} set"
    try:
        mode = open(THP_MODE, encoding="ascii").read()
    except OSError:
        return "huge pages left alone: the kernel has no transparent huge pages"
    if "[never]" in mode:
        return "huge pages left alone: the kernel's transparent huge pages are off (never)"
    import torch

    os.environ[THP_SWITCH] = "1"
    try:
        # torch reads the switch at its first CPU allocation; with it, a block of 2 MB or more is
        # page-aligned (else 64-byte aligned, so two page-aligned blocks by chance: 1 in 4,096)
        probes = [torch.empty(3 << 20, dtype=torch.uint8) for _ in range(2)]
    finally:
        del os.environ[THP_SWITCH]
    if all(p.data_ptr() % 4096 == 0 for p in probes):
        return HUGE_PAGES
    return (f"huge pages left alone: torch had allocated in this process before; set {THP_SWITCH}=1 "
            "before the first tensor for them")
