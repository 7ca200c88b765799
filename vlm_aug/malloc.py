"""glibc's allocator, set for a process that runs models on the CPU: `tune_malloc()`.

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
    """Fix glibc's mmap and trim thresholds for this process (once), if `wanted` (config `tune_malloc`).
    -> the process's state, for the record: it stays tuned once tuned, whatever a later run asks."""
    global _outcome
    if wanted and _outcome is None:
        _outcome = _tune()
    return _outcome or "left alone: tune_malloc false"


def _tune() -> str:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "left alone: not glibc"
    chosen = [name for name in USER_CHOICES if name in os.environ]
    preload = os.environ.get("LD_PRELOAD", "")
    if "malloc" in preload:  # jemalloc, tcmalloc, mimalloc: the user picked an allocator
        chosen.append(f"LD_PRELOAD={preload}")
    if chosen:
        return f"left alone: {', '.join(chosen)} set"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "left alone: mallopt not found"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "left alone: mallopt refused"
    return f"glibc: mmap threshold {MMAP_THRESHOLD >> 20} MB, trim threshold {TRIM_THRESHOLD >> 20} MB"
