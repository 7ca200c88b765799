"""Input shards: expand patterns, and read a tar into Samples without trusting it.

Members are grouped into samples the WebDataset way (consecutive members that
share a key). Member names are only parsed, never used as file paths; no
member is ever unpickled; anything wrong with a sample becomes its `reason`.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import os
import posixpath
import stat
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

import braceexpand
import fsspec

from vlm_aug.formats import IMAGE_EXTS, MAX_CAPTION_BYTES, META_EXT, OTHER_IMAGE_EXTS
from vlm_aug.sample import Sample

# bytes read after the end-of-archive block to check that only zeros follow (tars pad to 10,240-byte
# records); past this the rest is left unread rather than read for nothing
MAX_TAIL_BYTES = 64 * 1024 * 1024
# a compressed shard may inflate to any size up to MAX_INFLATED_FREE; past it, to at most MAX_INFLATION
# bytes per compressed byte read. Real shards stay far below (distinct images: ~1-5x; 2,000 copies of
# one tiny sample: 104x gzip, 320x bzip2/xz); zeros inflate 1,029x (gzip) to 1.3 million x (bzip2).
MAX_INFLATED_FREE = 1024 * 1024 * 1024
MAX_INFLATION = 200
_TAIL_CHUNK = 1024 * 1024


# what a folder or a glob given as input is read for (compression is told by the first bytes, not the name)
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz")


def _expand_one(item: str) -> list[str]:
    """One path, glob or URL (braces already expanded) -> its shard URLs. A folder stands for the
    shards in it; a name that exists is taken as it is even when it holds glob characters
    (`shard[1].tar`)."""
    if "://" in item and not item.startswith("file://"):
        fs, path = fsspec.core.url_to_fs(item)
        protocol = item.split("://", 1)[0]
        if glob.has_magic(path):
            hits = _shards_of_glob(item, fs.glob(path))
        elif not protocol.endswith(("http", "https")) and fs.isdir(path):  # (an http "folder" is a page of links)
            # an object-store prefix, as a local folder: its shards (it was read as one empty shard, committed)
            hits = sorted(h for h in fs.ls(path, detail=False) if h.lower().endswith(SHARD_SUFFIXES))
            if not hits:
                raise FileNotFoundError(f"input {item!r} is a folder with no shards in it ({', '.join(SHARD_SUFFIXES)})")
        else:
            hits = [path] if fs.exists(path) else []
        return [h if "://" in h else f"{protocol}://{h}" for h in hits]  # (http's paths are whole URLs)
    local = item[len("file://"):] if item.startswith("file://") else item
    if posixpath.isdir(local):
        hits = sorted(os.path.join(local, n) for n in os.listdir(local) if n.lower().endswith(SHARD_SUFFIXES))
        if not hits:
            raise FileNotFoundError(f"input {item!r} is a folder with no shards in it ({', '.join(SHARD_SUFFIXES)})")
    elif posixpath.exists(local):
        hits = [local]
    else:
        hits = _shards_of_glob(item, sorted(glob.glob(local))) if glob.has_magic(local) else []
    return [os.path.abspath(h) for h in hits]  # provenance must not depend on the cwd


def _named_as_shard(path: str) -> bool:
    """A tar's name (any case: `X.TAR`), or a name without an extension (`shard-0001`: the reader tells a
    tar, compressed or not, by its first bytes)."""
    base = posixpath.basename(path.rstrip("/")).lower()
    return base.endswith(SHARD_SUFFIXES) or "." not in base


def _shards_of_glob(item: str, hits: list[str]) -> list[str]:
    """A glob's shards: the files it matches that are named as shards (img2dataset writes a .parquet
    and a _stats.json beside each tar, and `dir/*` would make each an empty shard, committed). A glob
    that matches files but no shard is an error naming them."""
    shards = [h for h in hits if _named_as_shard(h)]
    if hits and not shards:
        shown = ", ".join(posixpath.basename(h) for h in hits[:3]) + (f" and {len(hits) - 3} more" if len(hits) > 3 else "")
        raise FileNotFoundError(f"input {item!r} matches {len(hits)} file(s) but no shard ({shown}); a glob takes "
                                f"the files named {', '.join(SHARD_SUFFIXES)} or without an extension: name other shards one by one")
    if len(shards) < len(hits):
        print(f"vlm-aug: input {item!r}: {len(hits) - len(shards)} file(s) it matches are not shards and are "
              f"left out ({', '.join(posixpath.basename(h) for h in hits if h not in shards)[:200]})", file=sys.stderr)
    return shards


def expand_inputs(patterns: list[str]) -> list[str]:
    """Paths, folders, globs, brace patterns and fsspec URLs -> sorted, unique shard URLs. Every name a
    brace pattern spells out must exist: `{000000..000099}.tar` with shards missing is an error that
    names them, not a run on fewer shards."""
    urls: list[str] = []
    for pattern in patterns:
        found: list[str] = []
        items = list(braceexpand.braceexpand(pattern))
        missing = []
        for item in items:
            hits = _expand_one(item)
            if not hits:
                missing.append(item)
            found += hits
        if not found:
            if pattern.startswith("pipe:"):
                raise FileNotFoundError(f"input {pattern!r}: webdataset's pipe: URLs (a shell command) are not "
                                        "read; give the shard's path, a glob, or an fsspec URL (s3://, gs://, "
                                        "https://, hf://) instead")
            raise FileNotFoundError(f"input {pattern!r} matches no file; check the path or pattern")
        if missing and len(items) > 1:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(f"input {pattern!r}: {len(missing)} of the {len(items)} names it spells "
                                    f"out match no file: {shown}. Fix the range, or use a glob (*) to take "
                                    "whatever exists")
        urls += found
    return sorted(dict.fromkeys(urls))


def input_identity(url: str) -> dict:
    """Size and modification time (local) or ETag (object stores) of an input shard."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        info = fs.info(path)
    except OSError:  # unreadable: the reader records why; nothing to compare on a rerun
        return {}
    lfs = info.get("lfs") if isinstance(info.get("lfs"), dict) else {}
    # size alone misses edits (tars pad to 10,240-byte records): mtime (local), LastModified (s3),
    # Last-Modified (http), ETag; hf:// gives the blob's id and its LFS sha256
    found = {"size": info.get("size"),
             "mtime": info.get("mtime") or info.get("LastModified") or info.get("Last-Modified"),
             "etag": info.get("ETag") or info.get("etag") or info.get("blob_id") or lfs.get("sha256")}
    return {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in found.items() if v is not None}


def public_name(url: str) -> str:
    """An input as a published card may name it: a remote URL as it is; a local path by its folder
    and file name only (`in/000001.tar`, `in/*.tar`), never the user's absolute path."""
    if "://" in url and not url.startswith("file://"):
        return url
    path = posixpath.normpath(url[len("file://"):] if url.startswith("file://") else url)
    parent = posixpath.basename(posixpath.dirname(path))
    return f"{parent}/{posixpath.basename(path)}" if parent else posixpath.basename(path)


def shard_name(url: str) -> str:
    """`.../000001.tar` (or another of `SHARD_SUFFIXES`: `.tar.gz`, `.tar.xz`, ...) -> `000001` (the output
    shard keeps the input's name)."""
    base = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in SHARD_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def split_member(name: str, known_exts: set[str]) -> tuple[str, str]:
    """Member name -> (key, ext). A known extension wins over the first-dot rule so
    that keys containing dots are recognised (and later sanitised) instead of mangled."""
    directory, base = posixpath.split(name)
    parts = base.split(".")
    for i in range(1, len(parts)):
        ext = ".".join(parts[i:]).lower()
        if ext in known_exts:
            key = ".".join(parts[:i])
            return posixpath.join(directory, key) if directory else key, ext
    if len(parts) == 1:
        return name, ""
    key = parts[0]
    return (posixpath.join(directory, key) if directory else key), ".".join(parts[1:]).lower()


def member_of(key: str, name: str) -> Optional[str]:
    """The extension of member `name` if it may belong to the sample of `key`, else None. A member named
    `KEY.` and more (`KEY.seg.png`, and `KEY.orig.txt` as `policy: both` writes it) belongs to the sample
    before it of that key, as webdataset groups members: `split_member`'s known extension alone made
    `KEY.orig` a sample of its own, with no image. The reader takes it so only when the sample does not
    hold that known extension yet: `a.b.jpg` after `a.jpg` is the sample `a.b` (a dotted key), not
    an unread member of `a`."""
    if name.startswith(key + ".") and len(name) > len(key) + 1 and "/" not in name[len(key):]:
        return name[len(key) + 1:].lower()
    return None


def _field_text(field: bytes, encoding: str, errors: str) -> str:
    return field.split(b"\0", 1)[0].decode(encoding, errors)


# name, mode, uid, gid, size, mtime, chksum, type, linkname, magic, uname, gname, devmajor, devminor, prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s")


class _PlainHeaders(tarfile.TarInfo):
    """`tarfile.TarInfo` with a fast path for the header of a plain file (type 0, octal numbers,
    unsigned checksum right): the same fields, half the cost (`tarfile` parses every header field
    by field and sums the block twice; headers were a third of reading a shard of small images).
    Anything else (links, devices, sparse, PAX or GNU long-name headers, base-256 numbers, a bad or
    signed checksum, the end of the archive) is parsed by `tarfile` itself, errors included;
    tests/test_io_path.py compares both on real and mutated headers."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        if len(buf) != tarfile.BLOCKSIZE or buf[156:157] not in (tarfile.REGTYPE, tarfile.AREGTYPE) or not buf[0]:
            return super().frombuf(buf, encoding, errors)
        name, *numbers, kind, linkname, _, uname, gname, devmajor, devminor, prefix = _HEADER.unpack_from(buf)
        try:  # as tarfile's nti: up to the first NUL, blanks stripped, octal
            mode, uid, gid, size, mtime, chksum, devmajor, devminor = [
                int(f.split(b"\0", 1)[0].strip() or b"0", 8) for f in (*numbers, devmajor, devminor)]
        except ValueError:
            return super().frombuf(buf, encoding, errors)
        if chksum != 256 + sum(buf) - sum(buf[148:156]):
            return super().frombuf(buf, encoding, errors)
        obj = cls()
        obj.name, obj.type = _field_text(name, encoding, errors), kind
        obj.mode, obj.uid, obj.gid, obj.size, obj.mtime, obj.chksum = mode, uid, gid, size, mtime, chksum
        obj.linkname = _field_text(linkname, encoding, errors)
        obj.uname, obj.gname = _field_text(uname, encoding, errors), _field_text(gname, encoding, errors)
        obj.devmajor, obj.devminor = devmajor, devminor
        prefix = _field_text(prefix, encoding, errors)
        if obj.type == tarfile.AREGTYPE and obj.name.endswith("/"):  # a V7 directory, as tarfile reads it
            obj.type = tarfile.DIRTYPE
            obj.name = obj.name.rstrip("/")
        if prefix:  # a ustar long name
            obj.name = prefix + "/" + obj.name
        return obj

    @classmethod
    def fromtarfile(cls, tar):
        """Past the first member `tarfile` takes a header it cannot parse (a flipped byte, a member
        longer than its header says) for the end of the archive and stops without a word: the fault is
        kept on the archive (`vlm_aug_fault`) for the reader to report."""
        try:
            return super().fromtarfile(tar)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as exc:
            tar.vlm_aug_fault = (tar.offset, exc)
            raise


_PLAIN = (tarfile.REGTYPE, tarfile.AREGTYPE)


def unsafe_member(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name


# what the bytes of an archive can be wrong with; any other OSError is the reading's, not the archive's
ARCHIVE_FAULTS = (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError, ValueError)


@dataclass
class ReadReport:
    """What went wrong with the shard as a whole (not a sample)."""

    error: Optional[str] = None
    ignored_members: int = 0
    keys_seen: dict = field(default_factory=dict)  # output key -> the input key that took it


class ShardReader:
    """Iterate the samples of one tar shard; shard-level faults go to `report`."""

    def __init__(self, url: str, caption_key: str, image_exts: list[str], max_member_bytes: int,
                 max_caption_bytes: int = MAX_CAPTION_BYTES):
        self.url = url
        self.caption_key = caption_key
        self.image_exts = [e.lower() for e in image_exts]
        self.max_member_bytes = max_member_bytes
        self.max_caption_bytes = max_caption_bytes
        caption_ext = caption_key.split(":")[0] if caption_key.startswith("json:") else caption_key
        self.known_exts = set(self.image_exts) | {caption_ext, META_EXT}
        self.report = ReadReport()

    def __iter__(self) -> Iterator[Sample]:
        """A fault of the archive itself (not a tar, cut short, bad compressed data) is the shard's
        `read_error` and what was read before it stands; a fault of reading (connection reset, I/O
        error, the file gone) is raised, so the shard fails and is read again, never committed short."""
        _refuse_special_file(self.url)
        try:
            with fsspec.open(self.url, "rb") as raw:
                counted = _CountingReader(_decompressed(raw))
                yield from self._samples(counted)
        except ARCHIVE_FAULTS as exc:
            self.report.error = f"{type(exc).__name__}: {exc}"

    def _samples(self, raw) -> Iterator[Sample]:
        current: Optional[dict] = None
        # a stream (fsspec files need not seek); compressed shards are inflated by `_decompressed`, whose
        # readers check the stream's CRC once `_check_end` reads it to its end (tarfile's own never does)
        tar = tarfile.open(fileobj=raw, mode="r|", tarinfo=_PlainHeaders)
        try:
            for info in tar:
                if info.isdir():
                    continue
                key, ext = split_member(info.name, self.known_exts)
                if current is not None and current["key"] != key:
                    rest = member_of(current["key"], info.name)
                    if rest is not None and ext not in current["members"]:  # `KEY.orig.txt` after `KEY.jpg`
                        key, ext = current["key"], rest
                if current is not None and current["key"] != key:
                    yield self._assemble(current)
                    current = None
                if current is None:
                    current = {"key": key, "members": {}, "names": [], "problems": []}
                current["names"].append(info.name)
                payload, problem = self._read_member(tar, info, ext)
                if problem:
                    current["problems"].append(problem)
                elif ext in current["members"]:
                    current["problems"].append(f"duplicate_member:{ext}")
                else:
                    current["members"][ext] = payload
        except InflationBomb as exc:
            self.report.error = str(exc)
            if current is not None:
                current["problems"].append("truncated")
        except ARCHIVE_FAULTS as exc:
            self.report.error = f"truncated: {type(exc).__name__}: {exc}"
            if current is not None:
                current["problems"].append("truncated")
        else:
            try:
                self._check_end(raw, tar)
            except InflationBomb as exc:
                self.report.error = str(exc)
            except ARCHIVE_FAULTS as exc:  # the compressed stream's CRC or end
                self.report.error = f"corrupt: {type(exc).__name__}: {exc}"
        if current is not None:
            yield self._assemble(current)

    def _check_end(self, raw: "_CountingReader", tar) -> None:
        """tarfile stops without a word at a header it cannot parse or one cut short; a complete tar ends
        in zero blocks, and nothing but zeros follows them. Reads what is left (at most
        `MAX_TAIL_BYTES`, a chunk at a time), which also makes a compressed stream check its CRC."""
        fault = getattr(tar, "vlm_aug_fault", None)
        if fault is not None:
            offset, exc = fault
            self.report.error = (f"truncated: a damaged tar header at byte {offset} ({exc}); the shard's "
                                 "members from there on are not read")
            return
        offset, ended, tail = tar.offset, True, 0
        while tail < MAX_TAIL_BYTES:
            chunk = raw.read(_TAIL_CHUNK)
            if not chunk:
                break
            tail += len(chunk)
            if chunk.strip(b"\0"):
                ended = False
                break
        if raw.total - offset < 512 or not ended:
            self.report.error = (f"truncated: the archive ends {raw.total - offset} bytes after the last "
                                 "member without a complete end-of-archive block")

    def _read_member(self, tar, info, ext: str):
        """-> (payload, problem). Unknown extensions (e.g. .pyd/.pickle) are counted, never read."""
        if unsafe_member(info.name):
            return None, "unsafe_member_path"
        if ext not in self.known_exts:  # a link or device among them is never followed either
            self.report.ignored_members += 1
            return None, None
        if not info.isfile():
            return None, "not_a_regular_file"
        if info.size > self.max_member_bytes:
            return None, f"member_too_large:{ext}"
        if info.type in _PLAIN and info.sparse is None and tar.fileobj.tell() == info.offset_data:
            data = tar.fileobj.read(info.size)  # what extractfile() would return, without its two wrappers
        else:
            data = tar.extractfile(info).read()
        if len(data) != info.size:
            raise EOFError(f"member {info.name!r} is cut short")
        return data, None

    def _assemble(self, group: dict) -> Sample:
        if _undecodable("".join(group["names"])):  # bytes that are not UTF-8 (tarfile's surrogates)
            return self._bad_names(group)
        key, members = _sanitize_key(group["key"]), group["members"]
        sample = Sample(key=key, shard=self.url, members=group["names"])
        if key != group["key"]:
            sample.source_key = group["key"]
        first = self.report.keys_seen.get(key)
        if first is not None:
            if first == group["key"]:
                sample.fail("duplicate_key", f"key {key!r} appears twice in the shard: two samples of one key, or "
                            "one whose members are not next to each other (webdataset groups adjacent members; "
                            "re-create the tar with its members sorted by name)")
            else:  # two input keys that one output key would stand for ('a.b' and 'a_b')
                sample.fail("duplicate_key", f"keys {first!r} (earlier in the shard) and {group['key']!r} are "
                            f"both written {key!r} (dots in keys become '_'; a folder './' is dropped)")
            return sample
        self.report.keys_seen[key] = group["key"]
        if not posixpath.basename(key) and not group["problems"]:  # members '.jpg', 'a/.jpg'
            sample.fail("empty_key", f"members {', '.join(map(repr, group['names'][:3]))} have no name before "
                        "their extension: webdataset and Hugging Face datasets drop such a sample")
            return sample
        if group["problems"]:
            sample.fail(group["problems"][0].split(":")[0], ", ".join(group["problems"]))
            return sample
        if META_EXT in members:
            sample.orig_json = _text(members[META_EXT])
            if not _valid_json(sample.orig_json):
                sample.fail("bad_json", "the json member is not valid UTF-8 JSON")
                return sample
        image_ext = next((e for e in self.image_exts if e in members), None)
        if image_ext:
            sample.image_bytes, sample.image_ext = members[image_ext], image_ext
        self._set_caption(sample, members)
        if sample.active and image_ext is None:
            self._fail_without_image(sample, group["names"])
        return sample

    def _bad_names(self, group: dict) -> Sample:
        """A sample with a member name that is not UTF-8: no output, parquet or loader can hold it. Its
        key and names are recorded with the bytes spelled out (`caf\\xe9`)."""
        names = [_printable(n) for n in group["names"]]
        key = _sanitize_key(_printable(group["key"]))
        sample = Sample(key=key, shard=self.url, members=names)
        sample.source_key = _printable(group["key"])
        if self.report.keys_seen.get(key) is None:
            self.report.keys_seen[key] = sample.source_key
        # quoted as spelled out (repr() would double the backslash of `\xe9`: a name copied from it matches nothing)
        quoted = ", ".join("'" + name + "'" for name in names[:3])
        sample.fail("bad_member_name", f"member name(s) {quoted} are not valid UTF-8")
        return sample

    def _fail_without_image(self, sample: Sample, names: list[str]) -> None:
        """An image member of a type not read is `unsupported_image_type`, naming it; none is `missing_image`."""
        images = set(IMAGE_EXTS) | set(OTHER_IMAGE_EXTS)
        found = sorted({split_member(n, self.known_exts)[1] for n in names} & images - set(self.image_exts))
        accepted = "/".join(self.image_exts)
        if found:
            return sample.fail("unsupported_image_type",
                               f"image member .{', .'.join(found)} is not read; accepted: {accepted} (input.image_exts)")
        sample.fail("missing_image", f"no member with extension {accepted}")

    def _set_caption(self, sample: Sample, members: dict) -> None:
        if self.caption_key.startswith("json:"):
            field_name = self.caption_key[len("json:"):]
            if sample.orig_json is None:
                return sample.fail("missing_caption", "no valid UTF-8 json member")
            try:
                value = json.loads(sample.orig_json).get(field_name)
            except (ValueError, AttributeError, RecursionError):
                return sample.fail("bad_json", "the json member is not a JSON object")
            raw = value.encode("utf-8") if isinstance(value, str) else None
        else:
            raw = members.get(self.caption_key)
        if raw is None:
            return sample.fail("missing_caption", f"no caption ({self.caption_key})")
        if len(raw) > self.max_caption_bytes:
            return sample.fail("caption_too_long", f"{len(raw)} bytes > limits.max_caption_bytes="
                               f"{self.max_caption_bytes}")
        text = _text(raw)
        if text is None:
            return sample.fail("bad_utf8", "the caption is not valid UTF-8")
        if not text.strip():
            return sample.fail("empty_caption")
        sample.caption_orig = text.strip()


def _refuse_special_file(url: str) -> None:
    """A local input that is a FIFO, a device or a socket would block or never end: the shard fails
    (and is named) instead."""
    if "://" in url and not url.startswith("file://"):
        return
    try:
        mode = os.stat(url[len("file://"):] if url.startswith("file://") else url).st_mode
    except OSError:
        return  # fsspec.open raises what is wrong, naming the file
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise OSError(f"input {url!r} is not a regular file (a FIFO, a device or a socket): give shard files")


class _Prefixed:
    """`raw` with the bytes already read from its start put back in front."""

    def __init__(self, head: bytes, raw):
        self.head, self.raw = head, raw

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data, self.head = self.head + self.raw.read(), b""
        else:
            data, self.head = self.head[:size], self.head[size:]
            if len(data) < size:
                data += self.raw.read(size - len(data))
        if not self.head:
            self.read = self.raw.read  # the rest straight from the file
        return data


# compressed shards by their magic bytes; Python's readers check the stream's CRC at its end
_COMPRESSED = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")), (b"BZh", lambda f: bz2.BZ2File(f)),
               (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f)))


class InflationBomb(tarfile.ReadError):
    """A compressed shard that inflates past `MAX_INFLATED_FREE` at over `MAX_INFLATION` to 1."""


class _Bounded:
    """The inflated stream of a compressed shard, stopped when it grows like a decompression bomb
    (members that are not read, e.g. a `.npy` of zeros, are inflated too, to be skipped)."""

    def __init__(self, inflated, packed: "_CountingReader"):
        self.inflated, self.packed, self.total = inflated, packed, 0

    def read(self, size: int = -1) -> bytes:
        data = self.inflated.read(size)
        self.total += len(data)
        if self.total > MAX_INFLATED_FREE and self.total > MAX_INFLATION * self.packed.total:
            raise InflationBomb(
                f"inflation: {self.packed.total} compressed bytes inflated to {self.total} (over {MAX_INFLATION} "
                f"to 1 past {MAX_INFLATED_FREE >> 30} GiB): read as a decompression bomb, the members from "
                "there on are not read; if the shard is genuine, decompress it and give the plain .tar")
        return data


def _decompressed(raw):
    head = raw.read(6)
    stream = _Prefixed(head, raw)
    for magic, reader in _COMPRESSED:
        if head.startswith(magic):
            packed = _CountingReader(stream)
            return _Bounded(reader(packed), packed)
    return stream


def _undecodable(name: str) -> bool:
    if name.isascii():
        return False
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _printable(name: str) -> str:
    """A name read with surrogate escapes, its bytes that are not UTF-8 spelled out as `\\xNN`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _CountingReader:
    """A read-only stream that counts the bytes it has handed out."""

    def __init__(self, raw):
        self.raw, self.total = raw, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.total += len(data)
        return data


def _sanitize_key(key: str) -> str:
    """Dots in a key break WebDataset grouping downstream: write them as '_'. A folder `.` and empty
    folders are dropped (`./a`, as `tar -C dir -cf x.tar .` names members, is written `a`: `tar -x`
    would put `./a` and `a` in one file). An unsafe name is left as it is (its
    sample fails with unsafe_member_path)."""
    directory, base = posixpath.split(key)
    base = base.replace(".", "_")
    if directory and not unsafe_member(key):
        directory = "/".join(part for part in directory.split("/") if part not in ("", "."))
    return posixpath.join(directory, base) if directory else base


def _valid_json(text: Optional[str]) -> bool:
    if text is None:
        return False
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):  # RecursionError: nested past Python's limit ([[[[...]]]])
        return False


def _text(data: bytes) -> Optional[str]:
    """UTF-8, without a byte-order mark (Windows tools write one; `str.strip` keeps it)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
