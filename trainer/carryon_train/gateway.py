"""The gateway's admin API from the trainer's side (stdlib urllib only): pull harvested shards,
push a trained carry-on. The admin key is sent as a bearer token and never logged."""
from __future__ import annotations

import json
import os
import uuid
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional, Tuple

from . import safetensors_io as st
from .base import WEIGHTS_FILE


class GatewayError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class AdminClient:
    def __init__(self, url: str, key: str, timeout: float = 120.0) -> None:
        self.url, self.key, self.timeout = url.rstrip("/"), key, timeout

    def _request(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.key}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:
                return res.status, dict(res.headers.items()), res.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                msg = json.loads(raw)["error"]["message"]
            except Exception:  # not our error envelope
                msg = raw[:500].decode("utf-8", "replace")
            raise GatewayError(err.code, msg) from None

    def json(self, method: str, path: str, body: Optional[Dict] = None) -> Dict:
        data = None if body is None else json.dumps(body).encode()
        _, _, raw = self._request(method, path, data, {"Content-Type": "application/json"} if data else None)
        return json.loads(raw)

    # -- harvest shards -----------------------------------------------------------------------

    def list_shards(self, tenant: Optional[str] = None) -> List[Dict]:
        q = "?" + urllib.parse.urlencode({"tenant": tenant}) if tenant else ""
        return self.json("GET", f"/admin/harvest/shards{q}")["data"]

    def download_shard(self, shard: Dict, out_dir: str) -> Tuple[str, bool]:
        """Downloads one shard to out_dir/<id>.safetensors (atomically), unless a valid copy is
        there. The data section's sha256 must equal the shard's `data_sha256` (also its ETag).
        Returns (path, downloaded)."""
        sid = shard["id"]
        if "/" in sid or sid.startswith("."):
            raise GatewayError(0, f"refusing shard id {sid!r}")
        path = os.path.join(out_dir, f"{sid}.safetensors")
        want = shard.get("metadata", {}).get("data_sha256")
        if os.path.exists(path) and want and _valid(path, want):
            return path, False
        os.makedirs(out_dir, exist_ok=True)
        _, _, raw = self._request("GET", f"/admin/harvest/shards/{urllib.parse.quote(sid, safe='')}")
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if want and not _valid(tmp, want):
            os.remove(tmp)
            raise GatewayError(0, f"shard {sid}: downloaded data does not match its data_sha256")
        os.replace(tmp, path)
        return path, True

    def pull(self, out_dir: str, tenant: Optional[str] = None, base_fingerprint: Optional[str] = None) -> List[str]:
        paths = []
        for shard in self.list_shards(tenant):
            if base_fingerprint and shard.get("metadata", {}).get("base_fingerprint") not in (None, base_fingerprint):
                continue  # another base's states: useless for this carry-on
            paths.append(self.download_shard(shard, out_dir)[0])
        return paths

    # -- carry-ons ----------------------------------------------------------------------------

    def upload_carry_on(self, tenant: str, package_dir: str) -> Dict:
        """Uploads the package's weights.safetensors + manifest.json: the gateway checks the weights
        against the manifest's architecture and builds the ONNX graph itself (it accepts no graphs).
        Tries `POST /admin/carry-ons` (fields tenant, manifest, file weights) and falls back to
        `POST /admin/tenants/{tenant}/carry-ons` where the first route does not exist."""
        with open(os.path.join(package_dir, "manifest.json"), "rb") as f:
            manifest = f.read()
        with open(os.path.join(package_dir, WEIGHTS_FILE), "rb") as f:
            weights = f.read()
        part = ("weights", WEIGHTS_FILE, weights)
        body, ctype = multipart([("tenant", None, tenant.encode()), ("manifest", None, manifest), part])
        try:
            _, _, raw = self._request("POST", "/admin/carry-ons", body, {"Content-Type": ctype})
            return json.loads(raw)
        except GatewayError as err:
            if err.status not in (404, 405):
                raise
        body, ctype = multipart([("manifest", None, manifest), part])
        _, _, raw = self._request("POST", f"/admin/tenants/{urllib.parse.quote(tenant, safe='')}/carry-ons", body, {"Content-Type": ctype})
        return json.loads(raw)

    def set_alias(self, tenant: str, carry_on_id: str, alias: str, version: int) -> Dict:
        t, c, a = (urllib.parse.quote(x, safe="") for x in (tenant, carry_on_id, alias))
        return self.json("PUT", f"/admin/tenants/{t}/carry-ons/{c}/aliases/{a}", {"version": version})


def _valid(path: str, data_sha256: str) -> bool:
    try:
        return st.data_sha256(path) == data_sha256
    except (OSError, ValueError):
        return False


def multipart(parts: List[Tuple[str, Optional[str], bytes]]) -> Tuple[bytes, str]:
    """multipart/form-data: (name, filename or None for a field, bytes)."""
    boundary = f"----carryon-train-{uuid.uuid4().hex}"
    out = bytearray()
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        ctype = "application/octet-stream" if filename else "text/plain; charset=utf-8"
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
