"""Remote storage that a Ray cluster and the studio both reach, when they share no disk: an S3 bucket
(`s3://bucket/prefix`, any S3-compatible server) or a folder every node mounts (`/mnt/shared/tunelab`).

The `ray_storage` setting names it (empty: the same-path mode of core/ray_backend.py). S3 takes its
endpoint from the `ray_storage_endpoint` setting or AWS_ENDPOINT_URL, its region from AWS_REGION
(default us-east-1), and its credentials from the usual AWS variables or the node's role, as the AWS SDK
reads them; none of them travels in a job's manifest.

Layout under the URI:
    inputs/<sha256>/...            a model folder or a dataset version, uploaded once per content hash;
                                   `_COMPLETE` is written last, so a half upload is never taken as done
    jobs/<kind>-<target>-<tag>/    one job across its attempts: manifest.json, stop.request, and out/
                                   (status.json, metrics.jsonl, checkpoint-N/, final/, result.json, ...)

Both sides use this module through pyarrow.fs, which Ray Train also takes for its own storage_path.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from tunelab import workspace
from tunelab.errors import UserError

COMPLETE = "_COMPLETE"
CHUNK = 8 << 20  # bytes per read when streaming a file to or from storage


class Store:
    """A pyarrow filesystem and the root path in it that the URI names."""

    def __init__(self, uri: str, endpoint: str | None = None):
        import pyarrow.fs as pafs
        self.uri, self.endpoint = uri.rstrip("/"), endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
        if self.uri.startswith("s3://"):
            scheme, host = "https", self.endpoint
            if host and "://" in host:
                scheme, host = host.split("://", 1)
            # Built directly, not by FileSystem.from_uri, which asks AWS itself for the bucket's region.
            # Delayed open writes a small object with one PutObject rather than a multipart upload (fewer
            # round trips; and moto 5.2's CompleteMultipartUpload reply is one Arrow cannot read).
            self.fs = pafs.S3FileSystem(endpoint_override=host, scheme=scheme, allow_delayed_open=True,
                                        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                                        or "us-east-1")
            self.root = self.uri[len("s3://"):]
        elif self.uri.startswith("/") or self.uri.startswith("file://"):
            self.fs = pafs.LocalFileSystem()
            self.root = self.uri[len("file://"):] if self.uri.startswith("file://") else self.uri
        else:
            raise UserError(f"setting 'ray_storage': {uri!r} is neither s3://bucket/prefix nor an absolute path "
                            "that every node of the cluster mounts")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def url(self, *parts: str) -> str:
        """The URI of a key, as another process opens it (`Store.open`)."""
        return "/".join([self.uri, *[p.strip("/") for p in parts if p]])

    def check(self) -> None:
        """A UserError naming the setting unless the root can be written and read back."""
        try:
            self.put_bytes(".tunelab-check", b"ok")
            assert self.get_bytes(".tunelab-check") == b"ok"
        except Exception as exc:
            raise UserError(f"setting 'ray_storage': cannot write to {self.uri}"
                            f"{' at ' + self.endpoint if self.endpoint else ''} ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None

    # -- single objects

    def _parent(self, path: str) -> None:
        """A local folder needs its parents made; S3 has no folders (and a marker object per level costs a PUT)."""
        if self.fs.type_name == "local":
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        self._parent(path)
        with self.fs.open_output_stream(path) as out:
            out.write(data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path(key)) as src:
                return src.read()
        except (FileNotFoundError, OSError) as exc:
            if isinstance(exc, FileNotFoundError) or "does not exist" in str(exc) or "NoSuchKey" in str(exc):
                return None
            raise

    def put_json(self, key: str, doc: dict) -> None:
        self.put_bytes(key, json.dumps(doc, default=str).encode())

    def get_json(self, key: str) -> dict | None:
        data = self.get_bytes(key)
        return json.loads(data) if data else None

    def exists(self, key: str) -> bool:
        import pyarrow.fs as pafs
        return self.fs.get_file_info(self.path(key)).type != pafs.FileType.NotFound

    def delete(self, key: str) -> None:
        import pyarrow.fs as pafs
        info = self.fs.get_file_info(self.path(key))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)

    def listdir(self, key: str) -> list[str]:
        """Names directly under `key` (none if it is missing)."""
        import pyarrow.fs as pafs
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(key), allow_not_found=True))
        except FileNotFoundError:
            return []
        return [i.base_name for i in infos]

    # -- folders

    def put_file(self, key: str, local: Path) -> None:
        """Stream a local file to `key` (a model's shards are GBs: never whole in memory)."""
        path = self.path(key)
        self._parent(path)
        with open(local, "rb") as src, self.fs.open_output_stream(path) as out:
            shutil.copyfileobj(src, out, CHUNK)

    def upload(self, local: Path, key: str) -> None:
        """Copy a file or a folder's files to `key` (a folder's marker files last, so readers see it whole)."""
        local = Path(local)
        if local.is_file():
            self.put_file(key, local)
            return
        files = sorted(p for p in local.rglob("*") if p.is_file())
        # trainer_state.json is what folders.latest_checkpoint takes as "saved whole": it goes last.
        for p in sorted(files, key=lambda p: p.name in ("trainer_state.json", COMPLETE)):
            self.put_file(f"{key}/{p.relative_to(local).as_posix()}", p)

    def download(self, key: str, local: Path) -> bool:
        """Copy the folder (or file) at `key` to `local`; False if nothing is there."""
        import pyarrow.fs as pafs
        info = self.fs.get_file_info(self.path(key))
        if info.type == pafs.FileType.NotFound:
            return False
        local = Path(local)
        # An object named "../x" (storage is written from the cluster too) must not land outside `local`.
        items = [(info.path, local)] if info.type == pafs.FileType.File else [
            (item.path, workspace.inside(local, local / item.path[len(info.path) + 1:]))
            for item in self.fs.get_file_info(pafs.FileSelector(info.path, recursive=True))
            if item.type == pafs.FileType.File]
        for path, target in items:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            with self.fs.open_input_stream(path) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            os.replace(tmp, target)
        return True

    def upload_once(self, files: dict[str, Path], digest: str) -> str:
        """Upload `files` (name in the folder -> local file) as inputs/<digest>/ unless already there; returns
        that key. The digest is their content hash, so a second run of the same model or data uploads nothing."""
        key = f"inputs/{digest}"
        if not self.exists(f"{key}/{COMPLETE}"):
            for name, path in sorted(files.items()):
                self.put_file(f"{key}/{name}", path)
            self.put_bytes(f"{key}/{COMPLETE}", b"")
        return key

    def fetch_once(self, key: str, cache: Path) -> Path:
        """A local copy of an inputs/<digest> folder, kept in `cache` by its digest (workers on one node share it)."""
        target = Path(cache) / key.rsplit("/", 1)[-1]
        if (target / COMPLETE).exists():
            return target
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        if not self.download(key, partial) or not (partial / COMPLETE).exists():
            raise RuntimeError(f"{self.url(key)} is missing or incomplete")
        try:
            partial.rename(target)
        except OSError:  # another worker on this node got there first
            shutil.rmtree(partial, ignore_errors=True)
        return target


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file under `folder`, by its path relative to it (what `upload_once` takes)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def content_hash(files: dict[str, Path], memo: Path | None = None) -> str:
    """sha256 over the names and contents of `files`. With `memo` (a JSON file), a file whose path, size and
    mtime are unchanged is not read again: a 15 GB model is hashed once, not at every launch."""
    known = {}
    if memo is not None and memo.exists():
        try:
            known = json.loads(memo.read_text())
        except json.JSONDecodeError:
            known = {}
    digest, changed = hashlib.sha256(), False
    for name, path in sorted(files.items()):
        st = os.stat(path)
        stamp = f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if stamp not in known:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            known[stamp], changed = h.hexdigest(), True
        digest.update(f"{name}\0{known[stamp]}\n".encode())
    if memo is not None and changed:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(memo, json.dumps(known).encode())
    return digest.hexdigest()
