"""``u2ad data fetch``: the public example MRI files, pinned by commit and checked by SHA-256.

The real-MRI chapter (notebook 11) and a few tests use a handful of small, public, MIT-licensed
files (:data:`MANIFEST`), the same as ``../shared/data/real/`` beside a project checkout:
- from ``spinalcordtoolbox/sct_testing_data`` (copyright NeuroPoly, MIT): the ``t2/`` subject
  (a healthy 3D T2w crop with its manual cord mask, level-labelled cord, point labels and
  centreline), the same subject's whole-neck field of view from the repository's 2014 history,
  and the PAM50 template files;
- from ``zhibaishouheilab/U2AD`` (copyright Qi Zhang, MIT): the authors' five sample slices,
  renamed (``data/private/train/1.npy`` -> ``clinical_dcm_1.npy`` ...);
- each repository's ``LICENSE``.

Every file is downloaded from ``https://raw.githubusercontent.com/<repo>/<commit>/<path>``
(pinned by commit), or copied from a local copy laid out like ``../shared/data/real`` with
``--source DIR`` (what the tests use: no machine here reaches the network). One file,
``PAM50_small_csf_derived.nii.gz``, is *derived* (resampled by this project from the
full-resolution PAM50 CSF mask) and exists in no repository: only ``--source`` provides it.

How a file is fetched (:func:`fetch_file`):
1. An existing file is re-verified (size and SHA-256); a good one is kept, a bad one is removed
   (it is never used) and fetched again.
2. Bytes go to ``<name>.part`` beside the destination; a ``.part`` left by an interrupted
   download is resumed from its size (HTTP ``Range``; a server that ignores the range sends the
   whole file, which then replaces the partial one), or replaced when it is already too long.
3. The complete ``.part`` is checked against the manifest: a mismatch deletes it and raises
   :class:`ChecksumError`. Only a verified file is renamed onto the destination
   (``os.replace``, atomic), so the destination is never half-written or wrong.

No network: :class:`FetchError` with a message that says so and how to proceed (``--source``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from u2ad_core.core.context import repo_root

__all__ = [
    "FileEntry",
    "MANIFEST",
    "LICENCES",
    "RAW_BASE",
    "FetchError",
    "ChecksumError",
    "FileResult",
    "default_dest",
    "sha256_file",
    "verify_file",
    "verify_dir",
    "fetch_file",
    "fetch",
    "cli_register",
]

RAW_BASE = "https://raw.githubusercontent.com"
"""Where pinned files are downloaded from (``RAW_BASE/<repo>/<commit>/<path>``)."""

SCT = "spinalcordtoolbox/sct_testing_data"
SCT_COMMIT = "af4c7e8783c9dcf8bcfc6c53b190af46260bb875"
SCT_2014 = "a1c31d680bb516d1089e03692214fe58b28229e2"  # before the t2 subject was cropped
U2AD = "zhibaishouheilab/U2AD"
U2AD_COMMIT = "de704dc1c2f38f755eae0cde99cdd87f606a5bcc"

LICENCES: dict[str, str] = {
    SCT: "MIT (c) 2014 NeuroPoly, see sct_testing_data/LICENSE",
    U2AD: "MIT (c) 2025 Qi Zhang, see u2ad_official/LICENSE",
}
CHUNK = 1 << 16


@dataclass(frozen=True)
class FileEntry:
    """One pinned file. ``dest``: path under the destination folder (``data/real``);
    ``path``: path inside ``repo`` at ``commit`` (``None`` for a derived file, which only a
    local source can provide); ``size`` in bytes; ``sha256`` hex digest; ``licence``."""

    dest: str
    repo: str
    commit: str
    path: str | None
    size: int
    sha256: str
    licence: str
    note: str = ""

    @property
    def url(self) -> str | None:
        """The pinned download URL (``None`` for a derived file)."""
        return None if self.path is None else f"{RAW_BASE}/{self.repo}/{self.commit}/{self.path}"


def _sct(dest: str, path: str | None, size: int, sha: str, commit: str = SCT_COMMIT, note: str = "") -> FileEntry:
    return FileEntry(f"sct_testing_data/{dest}", SCT, commit, path, size, sha, LICENCES[SCT], note)


def _u2ad(dest: str, path: str, size: int, sha: str, note: str = "") -> FileEntry:
    return FileEntry(f"u2ad_official/{dest}", U2AD, U2AD_COMMIT, path, size, sha, LICENCES[U2AD], note)


MANIFEST: tuple[FileEntry, ...] = (
    _sct("LICENSE", "LICENSE", 1077, "44da06f9462ccd4d5d4d173e9c8d8987a98a81bf7018222962ec4e37b5938668"),
    _sct("t2/t2.nii.gz", "t2/t2.nii.gz", 227586,
         "15cde5cdc5e56ad4f7d5fef698b317864c9bd68c0f72d2b3022c9fae6d11d977", note="healthy 3D T2w, cropped C2-C5"),
    _sct("t2/t2_seg-manual.nii.gz", "t2/t2_seg-manual.nii.gz", 1814,
         "929a27bb3c3753c158ba98b6f24305e9be535a351232c950c3436a7284b62f67", note="manual cord mask"),
    _sct("t2/t2_seg-manual_labeled.nii.gz", "t2/t2_seg-manual_labeled.nii.gz", 10660,
         "da5deebe38b055b969a1ca8b04f65b3a9bdae180cd89a5df3520bad895738155", note="cord labelled by level"),
    _sct("t2/labels.nii.gz", "t2/labels.nii.gz", 525,
         "90a4d521d5d44a31922aee040ff4faeecf26a9b61dca6bc0702a50bb889d007b", note="two point labels"),
    _sct("t2/t2_centerline-manual.nii.gz", "t2/t2_centerline-manual.nii.gz", 984,
         "9e7af072c1ce9d46eeb79fcf7fa60267dba0602738d72b9e8eef1d018947584a", note="manual centreline"),
    _sct("full_fov_2014/t2.nii.gz", "t2/t2.nii.gz", 3386335,
         "7caa28b484a77c9a28e4a42a7774ed19aedd142d8cc69df6b019872093ea4cb1", commit=SCT_2014,
         note="the t2 subject before cropping (whole neck)"),
    _sct("full_fov_2014/labels.nii.gz", "t2/labels.nii.gz", 7760,
         "6590e3d33e7eac34ec63b960f3e98873023f3f7f81dd466f5b8d1897e7a6c5b0", commit=SCT_2014,
         note="point labels on the whole-neck grid"),
    _sct("template/PAM50_small_t2.nii.gz", "template/template/PAM50_small_t2.nii.gz", 1789771,
         "98510d99a17fd87dfab6dbfda1a20acd82096b0cb9f968e2aaa7d2a55469516a", note="PAM50 T2 template (1x1x2 mm)"),
    _sct("template/PAM50_small_cord.nii.gz", "template/template/PAM50_small_cord.nii.gz", 31463,
         "d352ab0ec5228decf25172a0746cf270928cbb46b8408c41d0ccbe62c28b8d2e", note="template cord mask"),
    _sct("template/PAM50_small_levels.nii.gz", "template/template/PAM50_small_levels.nii.gz", 17724,
         "f2e8b985c40c2ee5948bf2d3a938b1f4f61408ad03b176465d60d0e7e313febc", note="template vertebral levels"),
    _sct("template/PAM50_small_label_disc.nii.gz", "template/template/PAM50_small_label_disc.nii.gz", 23812,
         "5f90f9416cf9a74d97e98f283c5203995810c584a481c0f7e7b45228ad7b8cd1", note="template disc labels"),
    _sct("template/PAM50_small_csf_derived.nii.gz", None, 21496,
         "2e1d94999a0de95267a6ae16d708b7a93de957ef5af3d704c9efc46965e2b28c",
         note="derived: the full-resolution PAM50 CSF mask resampled onto this grid; in no repository, "
              "only --source provides it (without it the CSF is estimated from a ring around the cord)"),
    _u2ad("LICENSE", "LICENSE", 1065, "ff669cd6b47d0fb5acf6b64c7aa8ef0820c845ab57a525e42921d5d7dcb3f145"),
    _u2ad("clinical_dcm_1.npy", "data/private/train/1.npy", 1572992,
          "c8fe3806b01509248f3793acd2b5c11b91991f1ca2c67b9363f372a7ed68e278", note="clinical DCM slice"),
    _u2ad("clinical_dcm_3.npy", "data/private/train/3.npy", 1572992,
          "03267d33b83506bca9aac3f85dad716707a37556768a088ed195e831a54adecb", note="clinical DCM slice, off-midline"),
    _u2ad("spine_generic_1.npy", "data/public/train/1.npy", 1572992,
          "c411185996eb5ffa281febe8d7a5c33cc3efc5ebccf09d63a37fd4ad2dec5e3a", note="healthy Spine Generic slice"),
    _u2ad("spine_generic_2.npy", "data/public/train/2.npy", 1572992,
          "cb428c25ef6b0e7b4187ce6248f21edb3bcd721064489f7f4c2cc23cc481ad8f", note="healthy Spine Generic slice"),
    _u2ad("spine_generic_3.npy", "data/public/train/3.npy", 1572992,
          "e0b28eada4182892bf27c2128ceac884c1040c31176e6cf02833ce9fcc97be3e", note="healthy Spine Generic slice"),
)
"""The files of ``data/real`` (``../shared/data/real``): destination, repository, commit, path
in the repository, size, SHA-256, licence."""


class FetchError(RuntimeError):
    """A file could not be fetched (no network, HTTP error, missing local source file)."""


class ChecksumError(FetchError):
    """A fetched file's size or SHA-256 differs from the manifest; it was deleted, not kept."""


@dataclass
class FileResult:
    """What happened to one file: ``status`` is ``"verified"`` (already there and good),
    ``"fetched"`` / ``"copied"`` (new, verified), ``"resumed"`` (completed from a partial
    download, verified), ``"skipped"`` (derived, no local source) or ``"failed"``."""

    entry: FileEntry
    status: str
    message: str = ""
    bytes_transferred: int = 0
    seconds: float = 0.0
    replaced: list[str] = field(default_factory=list)  # what was discarded on the way (bad file, stale .part)

    @property
    def ok(self) -> bool:
        return self.status in ("verified", "fetched", "copied", "resumed")


def default_dest() -> Path:
    """``data/real`` under the project root (git-ignored: ``data/*`` in ``.gitignore``)."""

    return repo_root() / "data" / "real"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, entry: FileEntry) -> str:
    """``""`` when ``path`` has the entry's size and SHA-256, else why not (missing, size, checksum)."""
    p = Path(path)
    if not p.is_file():
        return f"{entry.dest}: missing"
    size = p.stat().st_size
    if size != entry.size:
        return f"{entry.dest}: size {size} bytes, expected {entry.size}"
    digest = sha256_file(p)
    if digest != entry.sha256:
        return f"{entry.dest}: SHA-256 {digest[:12]}..., expected {entry.sha256[:12]}..."
    return ""


def verify_dir(root: str | os.PathLike, entries: Iterable[FileEntry] = MANIFEST) -> dict[str, str]:
    """``{dest: problem}`` for every entry of ``root`` that is missing or wrong (empty: all good)."""
    root = Path(root)
    out = {}
    for e in entries:
        why = verify_file(root / e.dest, e)
        if why:
            out[e.dest] = why
    return out


# --------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------
def _open_remote(url: str, offset: int, timeout: float):
    """(stream, resumed, total or None) for ``url`` from byte ``offset`` (HTTP Range)."""
    req = urllib.request.Request(url, headers={"User-Agent": "u2ad-data-fetch"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (https URL from the manifest)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the range starts at or past the end: the partial file is bad
            return None, False, None
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        host = url.split("/")[2] if "://" in url else url
        raise FetchError(
            f"cannot reach {host} ({reason}): is this machine offline? Fetch on a machine with network "
            "access, or copy a local copy with `u2ad data fetch --source DIR` (DIR laid out like "
            "../shared/data/real)") from exc
    resumed = bool(offset) and resp.status == 206
    length = resp.headers.get("Content-Length")
    return resp, resumed, (int(length) if length is not None else None)


def _open_local(src: Path, offset: int):
    if not src.is_file():
        raise FetchError(f"{src}: not in the local source (expected a copy laid out like ../shared/data/real)")
    f = open(src, "rb")
    f.seek(offset)
    return f, bool(offset), src.stat().st_size - offset


def fetch_file(entry: FileEntry, dest_root: str | os.PathLike, source: str | os.PathLike | None = None,
               timeout: float = 30.0, force: bool = False) -> FileResult:
    """Fetch one manifest entry into ``dest_root / entry.dest`` (see the module docstring).

    ``source``: a local folder laid out like ``../shared/data/real`` (copied from instead of
    downloading). ``force``: fetch again even when the existing file verifies. Never raises for
    a per-file problem: the :class:`FileResult` says ``"failed"`` with the reason (and, for a
    checksum mismatch, that the bad bytes were deleted).
    """
    t0 = time.perf_counter()
    dest = Path(dest_root) / entry.dest
    part = dest.with_name(dest.name + ".part")
    replaced: list[str] = []
    if dest.exists():
        why = "" if force else verify_file(dest, entry)
        if not why and not force:
            return FileResult(entry, "verified")
        dest.unlink()  # a known-bad (or forced) file is never left in place
        replaced.append(f"existing file removed ({why or 'forced'})")
    if source is None and entry.url is None:
        return FileResult(entry, "skipped", entry.note or "derived file: only --source provides it", replaced=replaced)
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    if offset >= entry.size:  # a partial file as the whole one, or longer: start again
        part.unlink()
        replaced.append(f"stale partial file of {offset} bytes discarded")
        offset = 0
    try:
        if source is not None:
            stream, resumed, _ = _open_local(Path(source) / entry.dest, offset)
        else:
            stream, resumed, _ = _open_remote(entry.url, offset, timeout)
            if stream is None:  # 416: the server says our partial file is past the end
                part.unlink()
                replaced.append("partial file rejected by the server (HTTP 416), restarted")
                offset = 0
                stream, resumed, _ = _open_remote(entry.url, 0, timeout)
        if offset and not resumed:
            replaced.append(f"partial file of {offset} bytes replaced (the server sent the whole file)")
        n = 0
        with stream, open(part, "ab" if resumed else "wb") as out:
            for block in iter(lambda: stream.read(CHUNK), b""):
                out.write(block)
                n += len(block)
    except FetchError as exc:
        return FileResult(entry, "failed", str(exc), replaced=replaced, seconds=time.perf_counter() - t0)
    except OSError as exc:  # interrupted transfer: the .part stays for the next run to resume
        return FileResult(entry, "failed", f"{entry.dest}: transfer interrupted ({exc}); run again to resume",
                          replaced=replaced, seconds=time.perf_counter() - t0)
    why = verify_file(part, entry)
    if why:
        part.unlink()
        return FileResult(entry, "failed", f"checksum mismatch, refused and deleted: {why.split(': ', 1)[1]} "
                          f"(source: {entry.url if source is None else Path(source) / entry.dest})",
                          bytes_transferred=n, replaced=replaced, seconds=time.perf_counter() - t0)
    os.replace(part, dest)
    status = "resumed" if resumed else ("copied" if source is not None else "fetched")
    msg = f"resumed at byte {offset}" if resumed else ""
    return FileResult(entry, status, msg, bytes_transferred=n, replaced=replaced, seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------
def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _select(only: Iterable[str] | None, manifest: Sequence[FileEntry] = MANIFEST) -> list[FileEntry]:
    if not only:
        return list(manifest)
    pats = list(only)
    sel = [e for e in manifest if any(p in e.dest for p in pats)]
    if not sel:
        raise ValueError(f"--only {pats}: matches no file of the manifest ({', '.join(e.dest for e in manifest)})")
    return sel


def fetch(dest: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
          only: Iterable[str] | None = None, timeout: float = 30.0, force: bool = False,
          log: Callable[[str], None] | None = print,
          entries: Sequence[FileEntry] | None = None) -> list[FileResult]:
    """Fetch (or re-verify) the manifest's files into ``dest`` (default :func:`default_dest`).

    ``source``: local folder laid out like ``../shared/data/real``; ``only``: substrings of the
    destination paths to fetch (e.g. ``["u2ad_official"]``). Prints one line per file (size,
    licence, status) through ``log``. Stops at the first network failure (the others would fail
    the same way) and returns the results so far; raises nothing per file. Returns one
    :class:`FileResult` per entry attempted. ``entries``: another manifest (tests); default
    :data:`MANIFEST`.
    """
    dest = Path(dest) if dest is not None else default_dest()
    if source is not None:
        src = Path(source)
        if not src.is_dir():
            raise FetchError(f"--source {src}: no such folder (expected a copy laid out like ../shared/data/real)")
        if src.resolve() == dest.resolve():
            raise FetchError(f"--source {src} is the destination itself")
    entries = _select(only, MANIFEST if entries is None else tuple(entries))
    say = log or (lambda s: None)
    total = sum(e.size for e in entries)
    where = f"from {source}" if source is not None else "from GitHub, pinned by commit"
    say(f"{len(entries)} files, {_size(total)}, {where} -> {dest}")
    for repo, lic in LICENCES.items():
        if any(e.repo == repo for e in entries):
            say(f"  {repo}: {lic}")
    results = []
    for e in entries:
        r = fetch_file(e, dest, source, timeout, force)
        results.append(r)
        extra = "; ".join([*r.replaced, r.message] if r.message else r.replaced)
        say(f"  {r.status:<8} {e.dest:<55} {_size(e.size):>9}  {e.repo}@{e.commit[:7]}"
            + (f"  ({extra})" if extra else ""))
        if r.status == "failed" and "cannot reach" in r.message:
            say("  stopped: no network (the other files would fail the same way)")
            break
    ok = sum(r.ok for r in results)
    bad = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    say(f"{ok}/{len(entries)} files present and verified" + (f", {len(skipped)} skipped" if skipped else "")
        + (f", {len(bad)} failed" if bad else ""))
    return results


# --------------------------------------------------------------------------------------
# Command line: u2ad data fetch
# --------------------------------------------------------------------------------------
def _cli_fetch(args: argparse.Namespace) -> int:
    if args.list:
        for e in _select(args.only):
            print(f"{e.dest:<45} {e.size:>9} {e.sha256[:16]}  {e.url or '(derived: --source only)'}  [{e.licence}]")
        return 0
    if args.check:
        root = Path(args.dest) if args.dest else default_dest()
        problems = verify_dir(root, _select(args.only))
        for why in problems.values():
            print(f"  {why}")
        print(f"{root}: {'all files verified' if not problems else f'{len(problems)} problem(s)'}")
        return 0 if not problems else 1
    try:
        results = fetch(args.dest, args.source, args.only, args.timeout, args.force)
    except (FetchError, ValueError) as exc:
        print(f"u2ad data fetch: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"u2ad data fetch: error: {r.message}", file=sys.stderr)
    return 1 if failed else 0


def cli_register(subparsers) -> None:
    """Add ``u2ad data fetch``."""
    p = subparsers.add_parser("data", help="the public example MRI files (fetch, check)",
                              description="Public example MRI files for the real-MRI chapter.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    f = sub.add_parser("fetch", help="download (or copy) the pinned files into data/real and verify them",
                       description=__doc__.split("\n\n")[0])
    f.add_argument("--dest", default=None, help="destination folder (default: data/real under the project root)")
    f.add_argument("--source", default=None,
                   help="copy from a local folder laid out like ../shared/data/real instead of downloading")
    f.add_argument("--only", nargs="*", default=None, help="only files whose destination contains one of these")
    f.add_argument("--timeout", type=float, default=30.0, help="network timeout per request, seconds")
    f.add_argument("--force", action="store_true", help="fetch again even files that verify")
    f.add_argument("--list", action="store_true", help="print the manifest and exit")
    f.add_argument("--check", action="store_true", help="only verify the files already in --dest")
    f.set_defaults(func=_cli_fetch)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

