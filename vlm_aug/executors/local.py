"""In-process executor: one loop over shards, models loaded once; for laptops, tests, debugging."""

from __future__ import annotations

import os
import time
import traceback

from vlm_aug.executors import RECEIVED, ExecutorReport, ShardOutcome
from vlm_aug.malloc import tune_malloc
from vlm_aug.pipeline import ShardProcessor
from vlm_aug.progress import RunProgress
from vlm_aug.shards.layout import DISK_FIXES, OutputUnwritable
from vlm_aug.workers import usable_cpus



class LocalExecutor:
    name = "local"

    def __init__(self, torch_threads: int | None = None, malloc: bool = True):
        self.torch_threads, self.malloc = torch_threads, malloc

    def run(self, urls: list[str], processor: ShardProcessor, progress: RunProgress) -> ExecutorReport:
        import torch

        # one core stays free for the prefetch (read/decode) thread: on 2 cores, torch with
        # 2 threads beside it ran 5x slower than with 1 (measured: 8.6 vs 44.7 samples/s)
        threads = self.torch_threads or max(1, usable_cpus() - 1)
        torch.set_num_threads(threads)
        report = ExecutorReport()
        malloc = tune_malloc(self.malloc)
        start = time.perf_counter()
        processor.setup()
        report.startup_s = time.perf_counter() - start
        busy = 0.0
        for i, url in enumerate(urls):
            t0 = time.perf_counter()
            try:
                stats = processor.process(url, then=urls[i + 1] if i + 1 < len(urls) else None)
                report.outcomes.append(ShardOutcome(url, stats=stats))
                progress.shard_done(stats)
            except (KeyboardInterrupt, SystemExit, OutputUnwritable):  # (a lost lease: OutputBusy)
                raise
            except OSError as exc:
                output = processor.config.output.path
                the_input = exc.filename is not None and os.path.abspath(str(exc.filename)) == os.path.abspath(url)
                if exc.errno in DISK_FIXES and not the_input:  # (an input it may not read fails its shard)
                    raise OutputUnwritable(f"cannot write the output shard of {url} to {exc.filename or output}: "
                                           f"{exc.strerror}; {DISK_FIXES[exc.errno]}, or choose another "
                                           "--output, then rerun: complete shards are kept") from exc
                detail = f"{type(exc).__name__}: {exc}"
                report.outcomes.append(ShardOutcome(url, error=detail))
                progress.shard_failed(url, detail)
            except Exception as exc:
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                report.outcomes.append(ShardOutcome(url, error=detail))
                progress.shard_failed(url, detail)
            busy += time.perf_counter() - t0
            if RECEIVED:  # a Ctrl-C Python dropped (raised in a __del__): stop at this shard's end
                raise KeyboardInterrupt("a Ctrl-C came while a shard was processed")
        report.workers["local"] = {"busy_s": round(busy, 3), "shards": len(urls), "malloc": malloc,
                                   "torch_threads": threads, "decode_workers": processor.decode_workers}
        return report
