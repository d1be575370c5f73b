"""`u2ad data fetch`: a local source and a local HTTP server stand in for GitHub (no network here).

Checked: files copied and verified; existing files re-verified; a checksum mismatch refused and
the bad bytes never left at the destination; a partial download resumed (HTTP Range) or
replaced (a server that ignores the range, a partial file that is too long or wrong); a clear
error when offline; the manifest itself against ../shared/data/real (skipped when absent).
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from u2ad_core.data import fetch as F
from u2ad_core.cli import main


def _entry(dest: str, data: bytes, path: str | None = "x", repo: str = "owner/repo") -> F.FileEntry:
    return F.FileEntry(dest=dest, repo=repo, commit="c" * 40, path=path, size=len(data),
                       sha256=hashlib.sha256(data).hexdigest(), licence="MIT (test)")


@pytest.fixture()
def source(tmp_path):
    """A local source laid out like ../shared/data/real: three small files (one corrupted) + entries."""
    files = {
        "sct_testing_data/LICENSE": b"The MIT License (MIT)\n" * 20,
        "sct_testing_data/t2/t2.nii.gz": bytes(range(256)) * 300,  # 76.8 kB, several chunks
        "u2ad_official/clinical_dcm_1.npy": b"\x93NUMPY" + bytes(5000),
    }
    root = tmp_path / "source"
    entries = []
    for dest, data in files.items():
        p = root / dest
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        entries.append(_entry(dest, data, path=dest))
    # the .npy in the source is corrupted after the manifest was made (same size, one byte differs)
    bad = bytearray(files["u2ad_official/clinical_dcm_1.npy"])
    bad[100] ^= 0xFF
    (root / "u2ad_official/clinical_dcm_1.npy").write_bytes(bytes(bad))
    return root, entries, files


def _no_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part") or p.name.startswith(".")]


def test_copy_from_local_source_verifies_and_refuses_a_mismatch(source, tmp_path):
    root, entries, files = source
    dest = tmp_path / "dest"
    lines: list[str] = []
    res = F.fetch(dest, source=root, entries=entries, log=lines.append)
    status = {r.entry.dest: r.status for r in res}
    assert status["sct_testing_data/LICENSE"] == "copied"
    assert status["sct_testing_data/t2/t2.nii.gz"] == "copied"
    assert (dest / "sct_testing_data/t2/t2.nii.gz").read_bytes() == files["sct_testing_data/t2/t2.nii.gz"]
    # the corrupted source file is refused, and nothing of it is left at the destination
    bad = next(r for r in res if r.entry.dest.endswith(".npy"))
    assert bad.status == "failed" and "checksum mismatch" in bad.message and "refused" in bad.message
    assert not (dest / "u2ad_official/clinical_dcm_1.npy").exists()
    assert not _no_leftovers(dest)
    # what was fetched is printed with sizes and licences
    text = "\n".join(lines)
    assert "kB" in text and "copied" in text and "failed" in text
    # a second run re-verifies what is there and tries the bad one again
    res2 = F.fetch(dest, source=root, entries=entries, log=None)
    assert [r.status for r in res2] == ["verified", "verified", "failed"]


def test_existing_bad_file_is_removed_and_replaced(source, tmp_path):
    root, entries, files = source
    dest = tmp_path / "dest"
    e = entries[1]
    target = dest / e.dest
    target.parent.mkdir(parents=True)
    target.write_bytes(b"garbage of the wrong size")
    r = F.fetch_file(e, dest, source=root)
    assert r.status == "copied" and any("existing file removed" in x for x in r.replaced)
    assert target.read_bytes() == files[e.dest]
    # a bad existing file whose new copy fails verification is gone, not kept
    e_bad = entries[2]
    t2 = dest / e_bad.dest
    t2.parent.mkdir(parents=True)
    t2.write_bytes(b"old and wrong")
    r = F.fetch_file(e_bad, dest, source=root)
    assert r.status == "failed" and not t2.exists() and not _no_leftovers(dest)


def test_partial_file_resumed_replaced_or_refused(source, tmp_path):
    root, entries, files = source
    dest = tmp_path / "dest"
    e = entries[1]
    data = files[e.dest]
    part = dest / (e.dest + ".part")
    part.parent.mkdir(parents=True)
    # 1. a clean prefix is resumed
    part.write_bytes(data[:30000])
    r = F.fetch_file(e, dest, source=root)
    assert r.status == "resumed" and r.bytes_transferred == len(data) - 30000
    assert (dest / e.dest).read_bytes() == data and not part.exists()
    # 2. a wrong prefix is resumed, fails verification and is deleted (destination untouched)
    (dest / e.dest).unlink()
    part.write_bytes(b"\x00" * 30000)
    r = F.fetch_file(e, dest, source=root)
    assert r.status == "failed" and "checksum mismatch" in r.message
    assert not part.exists() and not (dest / e.dest).exists()
    # ... and the next run starts from scratch and succeeds
    assert F.fetch_file(e, dest, source=root).status == "copied"
    # 3. a partial file longer than the whole one is discarded
    (dest / e.dest).unlink()
    part.write_bytes(b"\x01" * (len(data) + 10))
    r = F.fetch_file(e, dest, source=root)
    assert r.status == "copied" and any("stale partial" in x for x in r.replaced)


def test_derived_file_is_skipped_without_source(tmp_path):
    e = _entry("sct_testing_data/template/derived.nii.gz", b"abc", path=None)
    r = F.fetch_file(e, tmp_path)
    assert r.status == "skipped" and not r.ok and not (tmp_path / e.dest).exists()


# --------------------------------------------------------------------------------------
# HTTP: a local server with Range support (optional), standing in for raw.githubusercontent.com
# --------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    ranges: list[str] = []
    honour_range = True

    def do_GET(self):  # noqa: N802 (http.server API)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        self.ranges.append(rng or "")
        start = 0
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture()
def server(monkeypatch):
    handler = type("H", (_Handler,), {"files": {}, "ranges": [], "honour_range": True})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    monkeypatch.setattr(F, "RAW_BASE", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield handler
    httpd.shutdown()
    httpd.server_close()


def test_http_download_resume_and_mismatch(server, tmp_path):
    data = bytes(range(256)) * 400
    e = _entry("sct_testing_data/t2/t2.nii.gz", data, path="t2/t2.nii.gz", repo="spinalcordtoolbox/sct_testing_data")
    server.files[f"/{e.repo}/{e.commit}/{e.path}"] = data
    assert e.url.startswith("http://127.0.0.1:")
    r = F.fetch_file(e, tmp_path, timeout=5)
    assert r.status == "fetched" and (tmp_path / e.dest).read_bytes() == data
    # resume: the server gets a Range request from the partial file's size
    (tmp_path / e.dest).unlink()
    part = tmp_path / (e.dest + ".part")
    part.write_bytes(data[:1000])
    r = F.fetch_file(e, tmp_path, timeout=5)
    assert r.status == "resumed" and server.ranges[-1] == "bytes=1000-"
    assert (tmp_path / e.dest).read_bytes() == data
    # a server that ignores Range sends the whole file: the partial one is replaced
    server.honour_range = False
    (tmp_path / e.dest).unlink()
    part.write_bytes(data[:1000])
    r = F.fetch_file(e, tmp_path, timeout=5)
    assert r.status == "fetched" and any("replaced" in x for x in r.replaced)
    assert (tmp_path / e.dest).read_bytes() == data
    # wrong bytes on the server: refused, nothing kept
    e2 = replace(e, dest="other/t2.nii.gz", path="t2/other.nii.gz")
    server.files[f"/{e2.repo}/{e2.commit}/{e2.path}"] = data[::-1]
    r = F.fetch_file(e2, tmp_path, timeout=5)
    assert r.status == "failed" and "checksum mismatch" in r.message
    assert not (tmp_path / e2.dest).exists() and not _no_leftovers(tmp_path)
    # HTTP errors name the URL
    e3 = replace(e, dest="missing.bin", path="nope.bin")
    r = F.fetch_file(e3, tmp_path, timeout=5)
    assert r.status == "failed" and "HTTP 404" in r.message and "nope.bin" in r.message


def test_offline_error_is_clear(monkeypatch, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(F, "RAW_BASE", f"http://127.0.0.1:{port}")
    rc = main(["data", "fetch", "--dest", str(tmp_path / "d"), "--timeout", "2", "--only", "LICENSE"])
    out = capsys.readouterr()
    assert rc == 1
    assert "cannot reach 127.0.0.1" in out.err and "offline" in out.err and "--source" in out.err
    assert "stopped: no network" in out.out
    d = tmp_path / "d"
    assert not d.exists() or not [p for p in d.rglob("*") if p.is_file()]  # nothing half-written


def test_cli_source_check_and_errors(tmp_path, capsys):
    rc = main(["data", "fetch", "--source", str(tmp_path / "absent"), "--dest", str(tmp_path / "d")])
    assert rc == 2 and "no such folder" in capsys.readouterr().err
    rc = main(["data", "fetch", "--check", "--dest", str(tmp_path / "d"), "--only", "u2ad_official/LICENSE"])
    assert rc == 1 and "missing" in capsys.readouterr().out
    rc = main(["data", "fetch", "--list"])
    out = capsys.readouterr().out
    assert rc == 0 and "raw.githubusercontent.com/zhibaishouheilab/U2AD/de704dc1c2f38f755eae0cde99cdd87f606a5bcc/" \
                       "data/private/train/1.npy" in out and "derived" in out


def test_manifest_matches_shared_copy(real_data, tmp_path, capsys):
    """The pinned sizes and SHA-256s are those of ../shared/data/real, and a --source copy of the
    small files verifies (the large ones are checked in place)."""
    assert F.verify_dir(real_data) == {}
    listed = {e.dest for e in F.MANIFEST}
    present = {str(p.relative_to(real_data)) for p in real_data.rglob("*") if p.is_file() and p.name != "README.md"}
    assert listed == present
    rc = main(["data", "fetch", "--source", str(real_data), "--dest", str(tmp_path / "real"), "--only", "LICENSE",
               "t2/t2_seg"])
    out = capsys.readouterr().out
    assert rc == 0 and "NeuroPoly" in out and "Qi Zhang" in out and "copied" in out
    assert (tmp_path / "real/u2ad_official/LICENSE").read_bytes() == (real_data / "u2ad_official/LICENSE").read_bytes()
