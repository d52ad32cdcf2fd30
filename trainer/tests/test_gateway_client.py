"""The admin API client against a stand-in server (stdlib http.server): shard pull with checksum,
upload with the route fallback. The real gateway is exercised by test/e2e/trainer-e2e.test.ts."""
import json
import os
import shutil
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List

import numpy as np

from carryon_train import safetensors_io as st
from carryon_train.gateway import AdminClient, GatewayError

KEY = "sk-test"


class FakeGateway(BaseHTTPRequestHandler):
    shards: Dict[str, bytes] = {}
    meta: Dict[str, str] = {}
    corrupt = False
    has_flat_route = True
    uploads: List[Dict] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status: int, message: str) -> None:
        self.reply(status, json.dumps({"error": {"message": message, "type": "x", "param": None, "code": "x"}}).encode())

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self.error(401, "bad key")
        if self.path.startswith("/admin/harvest/shards?") or self.path == "/admin/harvest/shards":
            data = [{"object": "harvest.shard", "id": sid, "metadata": {"data_sha256": self.meta[sid], "base_fingerprint": "f" * 64}}
                    for sid in self.shards]
            return self.reply(200, json.dumps({"object": "list", "data": data}).encode())
        sid = self.path.rsplit("/", 1)[-1]
        if sid in self.shards:
            body = bytearray(self.shards[sid])
            if FakeGateway.corrupt:
                body[-1] ^= 1
            return self.reply(200, bytes(body), "application/octet-stream")
        self.error(404, "no such route")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/admin/carry-ons" and not FakeGateway.has_flat_route:
            return self.error(404, "Route POST:/admin/carry-ons not found")
        FakeGateway.uploads.append({"path": self.path, "body": body})
        self.reply(201, json.dumps({"object": "carry_on.version", "carry_on": "c", "version": 1}).encode())


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="gw-client-")
        shard = os.path.join(cls.tmp, "src.safetensors")
        st.save(shard, {"token_ids": np.arange(10, dtype=np.int32)}, {"format": "carryon-harvest"})
        with open(shard, "rb") as f:
            FakeGateway.shards = {"123-abc": f.read()}
        FakeGateway.meta = {"123-abc": st.data_sha256(shard)}
        cls.server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.url = f"http://127.0.0.1:{cls.server.server_address[1]}"
        pkg = os.path.join(cls.tmp, "pkg")
        os.makedirs(pkg)
        with open(os.path.join(pkg, "manifest.json"), "w") as f:
            json.dump({"id": "c"}, f)
        with open(os.path.join(pkg, "weights.safetensors"), "wb") as f:
            f.write(b"weights-bytes")
        cls.pkg = pkg

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.shutdown()
        shutil.rmtree(cls.tmp, True)

    def setUp(self) -> None:
        FakeGateway.corrupt = False
        FakeGateway.has_flat_route = True
        FakeGateway.uploads = []

    def test_pull_checks_and_skips_valid_copies(self) -> None:
        out = os.path.join(self.tmp, "pulled")
        client = AdminClient(self.url, KEY)
        paths = client.pull(out, tenant="t1")
        self.assertEqual([os.path.basename(p) for p in paths], ["123-abc.safetensors"])
        with open(paths[0], "rb") as f:
            self.assertEqual(f.read(), FakeGateway.shards["123-abc"])
        self.assertEqual(client.download_shard({"id": "123-abc", "metadata": {"data_sha256": FakeGateway.meta["123-abc"]}}, out)[1], False)
        self.assertEqual(client.pull(out, base_fingerprint="0" * 64), [])  # another base's shards are skipped

    def test_corrupt_download_is_refused(self) -> None:
        FakeGateway.corrupt = True
        out = os.path.join(self.tmp, "corrupt")
        with self.assertRaisesRegex(GatewayError, "data_sha256"):
            AdminClient(self.url, KEY).pull(out)
        self.assertEqual(os.listdir(out), [])

    def test_bad_key_is_an_error_with_the_gateway_message(self) -> None:
        with self.assertRaisesRegex(GatewayError, "401.*bad key"):
            AdminClient(self.url, "wrong").list_shards()

    def test_upload_uses_the_flat_route(self) -> None:
        AdminClient(self.url, KEY).upload_carry_on("t1", self.pkg)
        self.assertEqual(FakeGateway.uploads[0]["path"], "/admin/carry-ons")
        body = FakeGateway.uploads[0]["body"]
        self.assertIn(b'name="tenant"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nt1\r\n', body)
        self.assertIn(b'name="weights"; filename="weights.safetensors"', body)
        self.assertIn(b"weights-bytes", body)

    def test_upload_falls_back_to_the_tenant_route(self) -> None:
        FakeGateway.has_flat_route = False
        AdminClient(self.url, KEY).upload_carry_on("t1", self.pkg)
        self.assertEqual([u["path"] for u in FakeGateway.uploads], ["/admin/tenants/t1/carry-ons"])
        self.assertIn(b'name="weights"; filename="weights.safetensors"', FakeGateway.uploads[0]["body"])


if __name__ == "__main__":
    unittest.main()
