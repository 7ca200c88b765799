"""vlm-aug: rewrite terse captions with a VLM, score with CLIP, write shards with provenance.

`main(argv)` returns an exit code, so tests drive the CLI in-process.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from vlm_aug.commands import COMMAND_MODULES
from vlm_aug.config import ConfigError
from vlm_aug.executors import RECEIVED, signals_as_interrupt
from vlm_aug.shards.layout import DISK_FIXES, OutputUnwritable
from vlm_aug.stages.models import ModelUnavailable


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-aug", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


# the storage libraries fsspec runs on: their errors are the store's (endpoint, credentials, bucket), not a bug
STORAGE_MODULES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "aiohttp", "fsspec", "google.auth")


def disk_error(exc: BaseException) -> str | None:
    """The message for a local file that could not be written or read (a full disk, a file size limit,
    no permission), naming it and the fix; None for anything else (a remote store's errors included)."""
    if not isinstance(exc, OSError) or exc.errno not in DISK_FIXES or storage_error(exc, local=False):
        return None
    where = exc.filename or "a file"
    if "://" in str(where):
        return None
    return (f"{exc.strerror}: {where}: {DISK_FIXES[exc.errno]}, or write to another --output; rerun the same command "
            "to finish: complete shards are kept")


def storage_error(exc: BaseException, local: bool = True) -> bool:
    """An error of the store (endpoint, credentials, bucket) rather than a bug; `local`: a local
    permission, connection or timeout error counts too."""
    if local and isinstance(exc, (PermissionError, ConnectionError, TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0] in STORAGE_MODULES or cls.__module__.startswith(STORAGE_MODULES)
               for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    RECEIVED.clear()
    try:
        with signals_as_interrupt(signal.SIGINT):
            code = args.func(args)
        if RECEIVED:  # a Ctrl-C raised where Python drops it (a __del__) as the command ended: it is not hidden
            print(f"interrupted: the Ctrl-C came as the command was ending, after its work was done (it would "
                  f"have exited {code})", file=sys.stderr)
            return 130
        return code
    except (ConfigError, ModelUnavailable, FileNotFoundError, OutputUnwritable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        disk = disk_error(exc)
        if disk:
            print(f"error: {disk}", file=sys.stderr)
            return 2
        if not storage_error(exc):
            raise
        # a wrong endpoint, refused credentials, a bad bucket name: one line, not 160 of botocore's frames
        print(f"error: storage: {type(exc).__name__}: {exc}\nCheck the URL, the credentials in the environment "
              "(AWS_ACCESS_KEY_ID, ...) and the endpoint (AWS_ENDPOINT_URL); docs/cluster.md", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to finish; complete shards are kept", file=sys.stderr)
        return 130
    finally:
        RECEIVED.clear()  # (an in-process caller's next command starts with none)


if __name__ == "__main__":
    sys.exit(main())
