"""Driver-side progress: shards done/total, samples/s, tokens/s, ETA."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Optional

from tqdm import tqdm


@contextlib.contextmanager
def quiet_model_load():
    """transformers (5.x) draws a 'Loading weights' bar at each model load, `--no-progress` or not, and
    in every Ray actor (garbling the driver's output): vlm_aug reports its own progress."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


class RunProgress:
    """`on_done(stats)`: told of each committed shard (the run keeps sizes.json current with it)."""

    def __init__(self, total_shards: int, enabled: bool = True, on_done: Optional[Callable[[dict], None]] = None):
        self.bar = tqdm(total=total_shards, unit="shard", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, desc="vlm-aug")
        self.start = time.perf_counter()
        self.samples = self.tokens = 0
        self.on_done = on_done

    def shard_done(self, stats: dict) -> None:
        self.samples += stats["counts"]["inputs"]
        self.tokens += stats.get("scores", {}).get("new_tokens", 0)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(samples_s=f"{self.samples / elapsed:.1f}", tokens_s=f"{self.tokens / elapsed:.0f}")
        self.bar.update(1)
        if self.on_done is not None:
            self.on_done(stats)

    def shard_failed(self, url: str, error: str) -> None:
        self.bar.write(f"shard failed: {url}: {error}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
