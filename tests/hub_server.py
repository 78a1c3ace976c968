"""A local stand-in for the Hugging Face Hub API: the calls ``create_repo`` + ``upload_folder`` make.

huggingface_hub 2.4 (read from its source, ``hf_api.py``, ``_commit_api.py``, ``lfs.py``):

- ``POST /api/repos/create`` {name, organization, visibility} -> {url}; 409 (with the url) when
  it exists (``exist_ok=True`` accepts that);
- ``POST /api/validate-yaml`` {content, repoType} -> {errors, warnings} (a README.md commit);
- ``POST /api/models/<repo>/preupload/<rev>`` {files: [{path, sample, size}]} ->
  {files: [{path, uploadMode: "regular" | "lfs", shouldIgnore, oid}]};
- LFS files, when the client has no Xet (``HF_HUB_DISABLE_XET=1``):
  ``POST /<repo>.git/info/lfs/objects/batch`` -> basic-transfer upload actions, then a ``PUT``
  of the bytes to the action's ``href``;
- ``POST /api/models/<repo>/commit/<rev>``, NDJSON: a header, then ``file`` (base64 content) and
  ``lfsFile`` (sha256 oid of an uploaded object) lines -> {commitUrl, commitOid}.

Files larger than ``lfs_threshold`` bytes are declared ``lfs`` by the preupload answer (None: all
regular). Everything else is a 404, recorded in ``unknown`` so a test sees an unexpected call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    """Runs the server in a thread; ``repos[repo_id]`` maps committed paths to their bytes."""

    def __init__(self, lfs_threshold: int | None = None) -> None:
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, dict] = {}
        self.objects: dict[str, bytes] = {}
        self.calls: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.upload_modes: dict[str, str] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _json(self, status: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                hub.calls.append(("POST", path))
                body = self._body()
                if path == "/api/repos/create":
                    spec = json.loads(body)
                    repo = "/".join(p for p in (spec.get("organization"), spec["name"]) if p)
                    if repo in hub.repos:
                        return self._json(
                            409,
                            {
                                "error": "You already created this model repo",
                                "url": f"{hub.url}/{repo}",
                            },
                        )
                    hub.repos[repo] = {"visibility": spec.get("visibility"), "files": {}}
                    return self._json(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._json(200, {"errors": [], "warnings": []})
                match = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/([^/]+)", path)
                if match and match.group(1) in hub.repos:
                    repo = match.group(1)
                    if match.group(2) == "preupload":
                        files = json.loads(body)["files"]
                        answer = []
                        for f in files:
                            lfs = hub.lfs_threshold is not None and f["size"] > hub.lfs_threshold
                            mode = "lfs" if lfs else "regular"
                            hub.upload_modes[f["path"]] = mode
                            answer.append(
                                {"path": f["path"], "uploadMode": mode, "shouldIgnore": False}
                            )
                        return self._json(200, {"files": answer})
                    return self._commit(repo, body)
                match = re.fullmatch(r"/(.+)\.git/info/lfs/objects/batch", path)
                if match and match.group(1) in hub.repos:
                    objects = json.loads(body)["objects"]
                    actions = [
                        {
                            "oid": o["oid"],
                            "size": o["size"],
                            "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}},
                        }
                        for o in objects
                    ]
                    return self._json(200, {"transfer": "basic", "objects": actions})
                hub.unknown.append(("POST", path))
                self._json(404, {"error": f"not found: {path}"})

            def do_PUT(self) -> None:
                hub.calls.append(("PUT", self.path))
                match = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", self.path)
                if not match:
                    hub.unknown.append(("PUT", self.path))
                    return self._json(404, {"error": "not found"})
                data = self._body()
                if hashlib.sha256(data).hexdigest() != match.group(1):
                    return self._json(400, {"error": "sha256 mismatch"})
                hub.objects[match.group(1)] = data
                self._json(200, {})

            def do_GET(self) -> None:
                hub.calls.append(("GET", self.path))
                hub.unknown.append(("GET", self.path))
                self._json(404, {"error": "not found"})

            do_HEAD = do_GET

            def _commit(self, repo: str, body: bytes) -> None:
                files = hub.repos[repo]["files"]
                for line in body.splitlines():
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "file":
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        if value["oid"] not in hub.objects:
                            return self._json(400, {"error": f"LFS object {value['oid']} missing"})
                        files[value["path"]] = hub.objects[value["oid"]]
                    elif item["key"] != "header":
                        return self._json(400, {"error": f"unexpected commit line {item['key']}"})
                oid = hashlib.sha1(body).hexdigest()
                self._json(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}", "commitOid": oid})

        return Handler
