"""The one record type that flows between stages, and the shard that carries them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

PENDING, KEPT, REJECTED, ERROR = "pending", "kept", "rejected", "error"


@dataclass
class Sample:
    key: str
    shard: str
    members: list[str] = field(default_factory=list)
    image_bytes: Optional[bytes] = None
    image_ext: Optional[str] = None
    image: Any = None  # decoded PIL image; transient, never written
    caption_orig: Optional[str] = None
    meta_orig: Optional[str] = None  # the original json member, verbatim text
    caption_new: Optional[str] = None
    caption_final: Optional[str] = None
    scores: dict[str, Any] = field(default_factory=dict)
    status: str = PENDING
    reason: Optional[str] = None
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Still being processed: not yet rejected or failed."""
        return self.status == PENDING

    def fail(self, reason: str, detail: str = "") -> None:
        self.status, self.reason = ERROR, reason
        if detail:
            self.flags["error_detail"] = detail[:500]

    def reject(self, reason: str) -> None:
        self.status, self.reason = REJECTED, reason

