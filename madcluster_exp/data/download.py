"""Fetch, verify and install the benchmark datasets so that a partial or corrupt download never
looks like a valid dataset.

- Each source file streams to ``<data_dir>/.downloads/<file>.part``; an interrupted transfer
  resumes with an HTTP Range request (or restarts cleanly when the server ignores ranges).
- A complete file is checked against the SHA-256 stored in ``sources.json``; a mismatch deletes
  it and fails. Where the repository does not know a checksum yet, the computed one is printed
  and recorded in ``<data_dir>/.downloads/recorded_checksums.json`` so it can be added.
- Archives are extracted into a temporary folder beside the target; members that would escape
  it (absolute paths, ``..``, links) are refused. Only when everything is in place is the
  folder renamed to ``<data_dir>/<NAME>`` in one step, with ``.complete.json`` inside.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional

from madcluster_exp.data.series import DataError

SOURCES = Path(__file__).with_name("sources.json")
CHUNK = 1 << 20


@dataclass
class SourceFile:
    url: str
    name: str  # file name in the download cache
    sha256: Optional[str] = None
    archive: Optional[str] = None  # zip | tar | None (a plain file)
    strip: str = ""  # prefix removed from archive members
    include: List[str] = field(default_factory=list)  # member prefixes kept (after strip)
    dest: str = ""  # folder under the dataset root for a plain file


@dataclass
class DatasetSource:
    name: str
    files: List[SourceFile]
    expect: List[str]  # paths (globs) that must exist after installing
    citation: str = ""


def load_sources(path: Path = SOURCES) -> Dict[str, DatasetSource]:
    raw = json.loads(Path(path).read_text())
    return {
        name: DatasetSource(
            name, [SourceFile(**f) for f in spec["files"]], spec["expect"], spec.get("citation", "")
        )
        for name, spec in raw.items()
    }


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- fetching
class Unreachable(DataError):
    """No connection to the source could be made (offline, no route, refused, DNS)."""


def fetch(url: str, dest: Path, timeout: float = 60.0, retries: int = 3) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` where a previous attempt stopped.
    Raises :class:`Unreachable` when no attempt could connect at all."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        connected = False
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                connected = True
                if have and resp.status == 200:
                    _say(f"  {dest.name}: server ignores ranges; restarting from byte 0")
                    have = 0
                mode = "ab" if have and resp.status == 206 else "wb"
                total = resp.headers.get("Content-Length")
                total = int(total) + have if total is not None else None
                done, last = have, time.perf_counter()
                with open(part, mode) as out:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        out.write(block)
                        done += len(block)
                        if time.perf_counter() - last > 2:
                            pct = f" ({100 * done / total:.0f} %)" if total else ""
                            _say(f"  {dest.name}: {done / 1e6:.1f} MB{pct}")
                            last = time.perf_counter()
                if total is not None and done < total:
                    raise urllib.error.URLError(f"connection closed at {done} of {total} bytes")
            part.replace(dest)
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # the range starts past the end: restart
                part.unlink()
                continue
            raise DataError(f"downloading {url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            if not connected:  # nothing was transferred: no network, or no server there
                reason = getattr(exc, "reason", exc)
                if attempt == retries:
                    host = urllib.parse.urlsplit(url).netloc or url
                    raise Unreachable(
                        f"cannot reach {host} ({reason}) after {retries} attempts: the "
                        "network is unreachable from here, or the server is down"
                    ) from None
                _say(f"  {dest.name}: cannot connect ({reason}); trying again")
                continue
            if attempt == retries:
                raise DataError(
                    f"downloading {url} failed after {retries} attempts ({exc}); "
                    f"run the same command again to resume from "
                    f"{part.stat().st_size if part.exists() else 0} bytes"
                ) from None
            _say(f"  {dest.name}: interrupted ({exc}); resuming (attempt {attempt + 1})")
    raise DataError(f"downloading {url}: gave up")  # pragma: no cover


def verify(path: Path, spec: SourceFile, cache: Path) -> str:
    digest = sha256_of(path)
    if spec.sha256:
        if digest != spec.sha256:
            path.unlink()
            raise DataError(
                f"{spec.name}: SHA-256 {digest} does not match the expected "
                f"{spec.sha256}; the corrupt file was deleted. Run the command "
                "again, or check the source."
            )
    else:
        record = cache / "recorded_checksums.json"
        known = json.loads(record.read_text()) if record.exists() else {}
        known[spec.url] = digest
        record.write_text(json.dumps(known, indent=2, sort_keys=True))
        _say(
            f"  {spec.name}: no checksum in the repository yet; SHA-256 {digest} recorded in "
            f"{record} (add it to madcluster_exp/data/sources.json)"
        )
    return digest


# ----------------------------------------------------------------------------- extracting
def _safe_member(name: str, target: Path) -> Path:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0].endswith(":")):
        raise DataError(f"refusing archive member {name!r}: it would escape {target}")
    out = (target / Path(*pure.parts)).resolve()
    if target.resolve() not in out.parents and out != target.resolve():
        raise DataError(f"refusing archive member {name!r}: it would escape {target}")
    return out


def _relative(name: str, spec: SourceFile) -> Optional[str]:
    name = name.replace("\\", "/")
    if spec.strip:
        if not name.startswith(spec.strip):
            return None
        name = name[len(spec.strip) :]
    if not name or name.endswith("/"):
        return None
    if spec.include and not any(name.startswith(p) for p in spec.include):
        return None
    return name


def _members(archive: Path, kind: Optional[str]):
    """Yield (name, is_link_or_device, is_file, open) for every member of a zip or tar file."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                link = (info.external_attr >> 16) & 0o170000 == 0o120000
                yield info.filename, link, not info.is_dir(), lambda i=info: zf.open(i)
    elif kind == "tar":
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                yield (
                    m.name,
                    m.issym() or m.islnk() or m.isdev(),
                    m.isfile(),
                    lambda m=m: tf.extractfile(m),
                )
    else:
        raise DataError(f"{archive}: unknown archive type {kind!r}")


def extract(archive: Path, spec: SourceFile, target: Path) -> int:
    """Extract the wanted members of ``archive`` under ``target``; returns how many."""
    count = 0
    for name, link, is_file, open_member in _members(archive, spec.archive):
        # Every member is checked, wanted or not: a malicious archive is refused whole.
        _safe_member(name, target)
        if link:
            raise DataError(f"refusing archive member {name!r}: a link or device")
        rel = _relative(name, spec)
        if rel is None or not is_file:
            continue
        out = _safe_member(rel, target)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open_member() as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        count += 1
    if count == 0:
        raise DataError(
            f"{archive}: no member under {spec.strip or '/'}{spec.include or ''}; "
            "is this the right archive?"
        )
    return count


# ---------------------------------------------------------------------------- installing
def install(
    source: DatasetSource, files: Dict[str, Path], digests: Dict[str, str], data_dir: Path
) -> Path:
    """Build the dataset folder beside its final place, check it, then rename it into place."""
    final = data_dir / source.name
    tmp = data_dir / f".tmp-{source.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        for spec in source.files:
            path = files[spec.name]
            if spec.archive:
                extract(path, spec, tmp)
            else:
                out = tmp / spec.dest / spec.name
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out)
        missing = [pattern for pattern in source.expect if not list(tmp.glob(pattern))]
        if missing:
            raise DataError(
                f"{source.name}: after unpacking, nothing matches {missing}; the "
                "files are not in the published layout"
            )
        (tmp / ".complete.json").write_text(
            json.dumps(
                {
                    "dataset": source.name,
                    "installed": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "files": {
                        s.name: {"url": s.url, "sha256": digests[s.name]} for s in source.files
                    },
                },
                indent=2,
            )
        )
        old = None
        if final.exists():
            old = data_dir / f".old-{source.name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)  # one step: the dataset is either all there or not there
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def download(
    name: str,
    data_dir: Path,
    sources: Optional[Dict[str, DatasetSource]] = None,
    mirror: Optional[str] = None,
) -> Path:
    sources = sources or load_sources()
    if name not in sources:
        raise DataError(f"no download source for {name!r}; known: {sorted(sources)}")
    source = sources[name]
    cache = data_dir / ".downloads" / name
    cache.mkdir(parents=True, exist_ok=True)
    files, digests = {}, {}
    for spec in source.files:
        url = f"{mirror.rstrip('/')}/{name}/{spec.name}" if mirror else spec.url
        dest = cache / spec.name
        if dest.exists() and spec.sha256 and sha256_of(dest) == spec.sha256:
            _say(f"  {spec.name}: already downloaded and verified")
        else:
            _say(f"  {spec.name}: fetching {url}")
            try:
                fetch(url, dest)
            except Unreachable as exc:
                raise Unreachable(
                    f"downloading {name}: {exc}.\n"
                    f"  Download {url} on a machine that can reach it, then install it here "
                    f"with:  python -m madcluster_exp.data prepare {name} --from <folder holding "
                    f"{spec.name}>"
                ) from None
        digests[spec.name] = verify(dest, spec, cache)
        files[spec.name] = dest
    final = install(source, files, digests, data_dir)
    _say(f"{name} installed in {final}")
    return final


def prepare_from(
    name: str, origin: Path, data_dir: Path, sources: Optional[Dict[str, DatasetSource]] = None
) -> Path:
    """Install from files downloaded by hand: a folder holding the source files (or the one
    source file itself), verified and unpacked exactly like a download."""
    sources = sources or load_sources()
    if name not in sources:
        raise DataError(f"no source description for {name!r}; known: {sorted(sources)}")
    source = sources[name]
    if not origin.exists():
        raise DataError(f"--from {origin}: no such file or folder")
    cache = data_dir / ".downloads" / name
    cache.mkdir(parents=True, exist_ok=True)
    files, digests = {}, {}
    for spec in source.files:
        candidate = origin if origin.is_file() and origin.name == spec.name else origin / spec.name
        if not candidate.is_file():
            raise DataError(
                f"--from {origin}: {spec.name} not found; expected the files "
                f"{[s.name for s in source.files]} (as downloaded from "
                f"{[s.url for s in source.files]})"
            )
        dest = cache / spec.name
        shutil.copyfile(candidate, dest)
        digests[spec.name] = verify(dest, spec, cache)
        files[spec.name] = dest
    final = install(source, files, digests, data_dir)
    _say(f"{name} installed in {final} from {origin}")
    return final


def status(data_dir: Path, sources: Optional[Dict[str, DatasetSource]] = None) -> Dict[str, str]:
    sources = sources or load_sources()
    out = {}
    for name, source in sources.items():
        root = data_dir / name
        if (root / ".complete.json").exists():
            out[name] = f"installed ({root})"
        elif root.exists() and all(list(root.glob(p)) for p in source.expect):
            out[name] = f"present, placed by hand ({root})"
        else:
            out[name] = f"missing: python -m madcluster_exp.data download {name}"
    return out
