"""One run per output directory at a time: a lease file (run id, host, pid, start, heartbeat),
created atomically, refreshed while the run lives, removed when it ends.

A second run on a held output stops at once, naming the holder. A lease whose heartbeat is stale
(the holder crashed or was SIGKILLed; on the same host, a holder pid that no longer exists) is
taken over, and said so. Atomic creation: `open(..., "xb")`, which is O_EXCL on a local or NFS
path and a conditional put (If-None-Match) on AWS S3; backends without it get a check-then-write
(docs/cluster.md says what that guarantees).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import threading
import time
from typing import Optional

from fsspec.implementations.local import LocalFileSystem

from vlm_aug.shards.layout import LEASE_FILE, OutputDir, OutputUnwritable



class OutputBusy(OutputUnwritable):
    """Another run holds the output directory."""


def _now() -> float:
    return time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _pid_namespace() -> Optional[str]:
    """This process's PID namespace (Linux): a pid means the same process only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


class Lease:
    def __init__(self, out: OutputDir, run_id: str, stale_s: float = 30.0, heartbeat_s: float = 5.0):
        self.out, self.run_id, self.stale_s, self.heartbeat_s = out, run_id, stale_s, heartbeat_s
        self.path = out.top(LEASE_FILE)
        self.record = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "pid_ns": _pid_namespace(), "started": _now()}
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- taking it -------------------------------------------------------------------------
    def acquire(self) -> None:
        if not self._create():
            holder = self._holder()
            if holder is not None and not self._stale(holder):
                raise OutputBusy(self._busy_message(holder))
            self._retire(holder)
            print(f"vlm-aug: taking over the lease of {self.out.path}: {self._describe(holder)} "
                  "is gone or silent; its partial files will be removed", file=sys.stderr)
            if not self._create():
                raise OutputBusy(self._busy_message(self._holder() or {}))
        self.thread = threading.Thread(target=self._beat, name="vlm-aug-lease", daemon=True)
        self.thread.start()

    def _retire(self, holder: Optional[dict]) -> None:
        """Move the stale lease out of the way so that of two runs taking it over at once only one
        goes on. On a local disk by rename (one of two renames of a file wins) and a check that the
        file moved is the one judged stale, else it is put back (a link never overwrites) and the
        output is busy; elsewhere by delete."""
        if not isinstance(self.out.fs, LocalFileSystem):
            self.out.fs.rm(self.path)
            return
        aside = f"{self.path}.stale-{self.run_id}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another run retired it first: whoever creates the new one holds it
            return
        moved = self.out.read_json(aside)
        if holder is not None and moved is not None and moved.get("run_id") != holder.get("run_id"):
            try:  # a fresh lease taken in the meantime: give it back
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            raise OutputBusy(self._busy_message(moved))
        os.unlink(aside)

    def held(self) -> bool:
        """Whether the lease file still names this run (another run takes over a silent one); not when it is
        gone (its folder removed); an unreadable one is given the benefit of the doubt."""
        holder = self.out.read_json(self.path)
        if holder is None:
            return self.out.fs.exists(self.path)
        return holder.get("run_id") == self.run_id

    def _payload(self) -> bytes:
        return json.dumps({**self.record, "heartbeat": _now()}).encode()

    def _create(self) -> bool:
        """Create the lease file only if none exists; -> whether this call created it."""
        try:
            with self.out.fs.open(self.path, "xb") as handle:
                handle.write(self._payload())
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if "PreconditionFailed" in str(exc) or "412" in str(exc):  # S3's conditional put lost
                return False
            raise
        except (ValueError, NotImplementedError):  # the backend has no exclusive create
            if self.out.fs.exists(self.path):
                return False
            self._write()
            return True

    def _holder(self) -> Optional[dict]:
        for _ in range(3):  # a lease being rewritten can read as empty for a moment
            holder = self.out.read_json(self.path)
            if holder is not None:
                return holder
            time.sleep(0.2)
        return None

    def _stale(self, holder: dict) -> bool:
        same_pids = holder.get("host") == socket.gethostname() and holder.get("pid_ns") == self.record["pid_ns"]
        if same_pids and not _pid_alive(int(holder.get("pid", -1))):  # (a container with the host's name: not)
            return True
        return _now() - float(holder.get("heartbeat", 0)) > self.stale_s

    def _describe(self, holder: Optional[dict]) -> str:
        if not holder:
            return "an unreadable lease"
        return (f"run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}, "
                f"started {_stamp(float(holder.get('started', 0)))}, last heartbeat "
                f"{_now() - float(holder.get('heartbeat', 0)):.0f} s ago)")

    def _busy_message(self, holder: dict) -> str:
        return (f"output {self.out.path} is in use by {self._describe(holder)}. Wait for it to finish, or "
                f"write to another --output. A lease silent for over {self.stale_s:g} s is taken over.")

    # ---- keeping it ---------------------------------------------------------------------------
    def _write(self) -> None:
        tmp = f"{self.path}.tmp-{self.run_id}"
        with self.out.fs.open(tmp, "wb") as handle:
            handle.write(self._payload())
        self.out.fs.mv(tmp, self.path)

    def _beat(self) -> None:
        while not self.stop.wait(self.heartbeat_s):
            try:  # a store that fails for a while (any error of its library) is retried at the next beat:
                holder = self.out.read_json(self.path)  # the thread died at the first, and the lease went stale
            except Exception as exc:
                print(f"vlm-aug: warning: lease heartbeat could not read the lease: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                continue
            if holder is None and not self.out.fs.exists(self.path):  # removed with its folder: not made again
                print(f"vlm-aug: warning: the lease file of {self.out.path} is gone (the output folder removed or "
                      "moved?)", file=sys.stderr)
                return
            if holder and holder.get("run_id") != self.run_id:
                print(f"vlm-aug: warning: the lease of {self.out.path} was taken over by run "
                      f"{holder.get('run_id')}; this run's heartbeat was silent too long", file=sys.stderr)
                return
            try:
                self._write()
            except Exception as exc:  # a failed heartbeat is retried at the next beat
                print(f"vlm-aug: warning: lease heartbeat failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    def busy(self) -> Optional[str]:
        """Without taking it: the message naming the run that holds the lease now, if one does."""
        if not self.out.fs.exists(self.path):
            return None
        holder = self._holder()
        return self._busy_message(holder) if holder is not None and not self._stale(holder) else None

    def release(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=self.heartbeat_s + 5)
        try:
            holder = self.out.read_json(self.path)
            if holder and holder.get("run_id") == self.run_id:
                self.out.fs.rm(self.path)
        except Exception as exc:  # the store is down: say so, and what happens to the lease
            print(f"vlm-aug: warning: the lease of {self.out.path} could not be released ({type(exc).__name__}: "
                  f"{exc}); a later run takes it over once it is {self.stale_s:g} s old", file=sys.stderr)
