"""A small Hugging Face Hub stand-in on 127.0.0.1, for tests only (see ../shared/HUB.md).

It answers the calls huggingface_hub 2.x makes for `create_repo`, `create_branch`,
`upload_folder` (preupload + NDJSON commit), `repo_info`, `list_repo_tree`, `hf_hub_download`
and `snapshot_download`, keeping repositories in memory. Every file is declared "regular" at
preupload, so the large-file path (LFS / Xet storage) is never exercised.

Extras for tests: `tokens` maps valid tokens to user names (anything else is a 401),
`fail_next(path_part, status, times)` answers the next matching requests with an error, and
`requests` records (method, path) of every request.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the hub reports as a file's `oid`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, private: bool):
        self.private = private
        self.commits: dict[str, dict[str, bytes]] = {}  # commit sha -> {path: content}
        self.branches: dict[str, str] = {}  # branch -> commit sha
        self.messages: list[str] = []
        self.commit("main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                    "initial commit")

    def commit(self, branch: str, files: dict[str, bytes], message: str) -> str:
        sha = hashlib.sha1(f"{len(self.commits)}:{message}:{sorted(files)}".encode()).hexdigest()
        self.commits[sha] = files
        self.branches[branch] = sha
        self.messages.append(message)
        return sha

    def resolve(self, rev: str) -> str | None:
        rev = unquote(rev)
        return self.branches.get(rev) or (rev if rev in self.commits else None)


class HubState:
    def __init__(self):
        self.tokens = {"hf_test_write_token": "tester"}
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: list[list] = []  # [path_part, status, times_left]
        self.lock = threading.Lock()

    def fail_next(self, path_part: str, status: int = 503, times: int = 1) -> None:
        self.failures.append([path_part, status, times])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState  # set on the subclass made by `start`

    def log_message(self, *args):  # quiet
        pass

    # -- plumbing ----------------------------------------------------------------------------

    def _send(self, status: int, body=b"", headers: dict | None = None, head: bool = False):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None, **extra):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message, **extra}, headers)

    def _user(self) -> tuple[bool, str | None]:
        """(credentials acceptable, user name): no token is fine for reads, a bad one never."""
        auth = self.headers.get("Authorization", "")
        if not auth:
            return True, None
        token = auth.removeprefix("Bearer ").strip()
        user = self.state.tokens.get(token)
        return user is not None, user

    def _body(self) -> bytes:
        return self.body

    def _repo(self, repo_id: str, user: str | None):
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        return repo

    def _handle(self, method: str):
        path = urlsplit(self.path).path
        # Read the body first, whatever the answer: unread bytes would corrupt a kept-alive connection.
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.state.requests.append((method, path))
        with self.state.lock:
            for failure in self.state.failures:
                if failure[0] in path and failure[2] > 0:
                    failure[2] -= 1
                    return self._error(failure[1], "injected failure")
            ok, user = self._user()
            if not ok:
                return self._error(401, "Invalid credentials in Authorization header")
            parts = [p for p in path.split("/") if p]
            try:
                return self._route(method, parts, user)
            except Exception as exc:  # a bug here should fail the test, loudly
                return self._error(500, f"stand-in hub error: {exc!r}")

    do_GET = lambda self: self._handle("GET")  # noqa: E731
    do_HEAD = lambda self: self._handle("HEAD")  # noqa: E731
    do_POST = lambda self: self._handle("POST")  # noqa: E731

    # -- routes ------------------------------------------------------------------------------

    def _route(self, method: str, parts: list[str], user: str | None):
        base = f"http://{self.headers['Host']}"
        if parts == ["api", "whoami-v2"] and method == "GET":
            if user is None:
                return self._error(401, "Invalid username or password.")
            return self._send(200, {"name": user, "type": "user", "orgs": [],
                                    "auth": {"accessToken": {"role": "write"}}})
        if parts == ["api", "validate-yaml"] and method == "POST":
            content = json.loads(self._body())["content"]
            if content.startswith("---"):
                try:
                    yaml.safe_load(content.split("---")[1])
                except yaml.YAMLError as exc:
                    return self._send(400, {"errors": [{"message": str(exc)}], "warnings": []})
            return self._send(200, {"errors": [], "warnings": []})
        if parts == ["api", "repos", "create"] and method == "POST":
            if user is None:
                return self._error(401, "You must be authenticated to create a repo")
            payload = json.loads(self._body())
            repo_id = f"{payload.get('organization') or user}/{payload['name']}"
            if payload.get("organization") not in (None, user):
                return self._error(403, "You don't have the rights to create a model under this namespace")
            url = f"{base}/{repo_id}"
            if repo_id in self.state.repos:
                return self._error(409, "You already created this model repo", url=url)
            self.state.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            return self._send(200, {"url": url, "name": repo_id})
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            return self._api_model(method, "/".join(parts[2:4]), parts[4:], user, base)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), user)
        return self._error(404, f"no route for {method} {self.path}")

    def _api_model(self, method, repo_id, rest, user, base):
        repo = self._repo(repo_id, user)
        if repo is None:
            return
        action = rest[0] if rest else "info"
        if method == "GET" and action in ("info", "revision"):
            sha = repo.resolve(rest[1] if rest else "main")
            if sha is None:
                return self._error(404, "Invalid rev id", "RevisionNotFound")
            return self._send(200, {"id": repo_id, "sha": sha, "private": repo.private,
                                    "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])]})
        if method == "GET" and action == "tree":
            sha = repo.resolve(rest[1])
            if sha is None:
                return self._error(404, "Invalid rev id", "RevisionNotFound")
            prefix = "/".join(unquote(p) for p in rest[2:])
            return self._send(200, [{"type": "file", "path": p, "size": len(d), "oid": git_blob_sha1(d)}
                                    for p, d in sorted(repo.commits[sha].items()) if p.startswith(prefix)])
        if method != "POST":
            return self._error(404, "not found")
        if user is None or user != repo_id.split("/")[0]:
            return self._error(403, "You don't have write access to this repo")
        if action == "branch":
            branch = unquote("/".join(rest[1:]))
            if branch in repo.branches:
                return self._error(409, "Reference already exists")
            start = repo.resolve(json.loads(self._body() or b"{}").get("startingPoint") or "main")
            repo.branches[branch] = start
            return self._send(200, {})
        sha = repo.resolve(rest[1])
        if sha is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        files = repo.commits[sha]
        if action == "preupload":
            wanted = json.loads(self._body())["files"]
            return self._send(200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None}
                for f in wanted]})
        if action == "commit":
            lines = [json.loads(x) for x in self._body().splitlines() if x.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            new = dict(files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    new[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    new.pop(value["path"], None)
                elif key == "deletedFolder":
                    new = {p: d for p, d in new.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                elif key != "header":
                    return self._error(400, f"the stand-in hub does not support {key} (LFS/Xet)")
            commit = repo.commit(unquote(rest[1]), new, header["summary"])
            return self._send(200, {"commitUrl": f"{base}/{repo_id}/commit/{commit}",
                                    "commitOid": commit, "pullRequestUrl": None})
        return self._error(404, f"no route for {action}")

    def _resolve(self, method, repo_id, rev, file_path, user):
        repo = self._repo(repo_id, user)
        if repo is None:
            return
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "Invalid rev id", "RevisionNotFound")
        data = repo.commits[sha].get(unquote(file_path))
        if data is None:
            return self._error(404, "Entry not found", "EntryNotFound")
        self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(data)}"',
                               "Content-Type": "application/octet-stream"}, head=method == "HEAD")


class HubServer:
    """A running stand-in hub; `url` is the endpoint to give huggingface_hub."""

    def __init__(self):
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        repo = self.state.repos[repo_id]
        return repo.commits[repo.resolve(rev)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
