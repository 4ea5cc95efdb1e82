"""A Hugging Face Hub on this machine, for tests that never reach the network: repos laid out in
huggingface_hub's cache format, and a loopback HTTP server answering the Hub's API and resolve endpoints
the way huggingface.co does (the requests `snapshot_download` and `hf_hub_download` make)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import threading
import urllib.parse
from typing import Iterator

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_cache(cache: str, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> str:
    """`models--org--name/{blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> ../../blobs/<sha256>}`;
    returns the snapshot directory."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        with open(os.path.join(repo, "blobs", blob), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(snapshot, name))
    return snapshot


def read_files(directory: str) -> dict[str, bytes]:
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@contextlib.contextmanager
def serve(repos: dict[str, dict[str, bytes]], commit: str = COMMIT) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving `repos` ({repo_id: {file: bytes}}) at revision "main" (= `commit`);
    yields (endpoint, log of the requested paths)."""
    log: list[str] = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _error(self, code: int, error_code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(code)
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _route(self) -> None:
            path = urllib.parse.unquote(self.path)  # (a file name with "[" comes quoted, as to the Hub)
            log.append(f"{self.command} {path}")
            api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/?]+)(\?.*)?", path)
            tree = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/?]+)(/[^?]*)?(\?.*)?", path)
            resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            route = api or tree or resolve
            repo_id = route.group(1) if route else None
            if repo_id not in repos:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            revision = route.group(2)
            if revision not in ("main", commit):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repos[repo_id]
            if api or tree:
                if api:
                    answer = {"id": repo_id, "modelId": repo_id, "sha": commit,
                              "siblings": [{"rfilename": name} for name in files]}
                else:
                    answer = [{"type": "file", "path": name, "size": len(data), "oid": _git_blob_id(data),
                               "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}
                              for name, data in files.items()]
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return self.wfile.write(body)
            name = resolve.group(3)
            if name not in files:
                return self._error(404, "EntryNotFound", f"{name} does not exist on {revision}")
            data = files[name]
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)

        do_GET = do_HEAD = _route

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
