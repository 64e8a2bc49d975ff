#!/usr/bin/env python3
"""A redirecting front on the CNCF registry, as ACR answers blob downloads: a blob GET or HEAD
on the registry is answered 307 to a presigned OSS URL on `BUCKET.oss-REGION.aliyuncs.com`,
signed V1 (the host not signed), or V4 with `x-oss-additional-headers=host` for repositories
whose name ends in `-v4`. The same process serves those OSS URLs (any Host naming an
`.aliyuncs.com` OSS endpoint), logging the Host each came to, one line per fetch, to LOG.
Everything else goes to the registry as it is.

    oss_front.py LISTEN_PORT REGISTRY_URL OSS_HOST LOG
"""
import re
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, REGISTRY, OSS_HOST, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
BLOB = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
OSS_PATH = re.compile(r"^/oss/(?P<repo>.+)/(?P<digest>sha256:[0-9a-f]{64})$")


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("oss-front: " + fmt % args + "\n")

    def relay(self, path, head):
        req = urllib.request.Request(REGISTRY + path, method="HEAD" if head else "GET")
        for name in ("Accept", "Authorization", "Range"):
            if self.headers.get(name):
                req.add_header(name, self.headers[name])
        try:
            resp = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            resp = e
        body = b"" if head else resp.read()
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", resp.headers.get("Content-Length", "0") if head else str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def handle_any(self, head):
        host = self.headers.get("Host", "")
        path = self.path.split("?", 1)[0]
        oss = OSS_PATH.match(path)
        if ".oss-" in host and oss:
            with open(LOG, "a") as log:
                log.write(f"{self.command} {host} {oss['repo']} {oss['digest']}\n")
            return self.relay(f"/v2/{oss['repo']}/blobs/{oss['digest']}", head)
        blob = BLOB.match(path)
        if blob:
            if blob["repo"].endswith("-v4"):
                query = ("x-oss-signature-version=OSS4-HMAC-SHA256&x-oss-credential=LTAI%2F20250101%2Fcn-hangzhou%2Foss%2Faliyun_v4_request"
                         "&x-oss-date=20250101T000000Z&x-oss-expires=3600&x-oss-additional-headers=host&x-oss-signature=0f0f")
            else:
                query = "OSSAccessKeyId=LTAI&Expires=4102444800&Signature=c2lnbmVk"
            self.send_response(307)
            self.send_header("Location", f"http://{OSS_HOST}:{PORT}/oss/{blob['repo']}/{blob['digest']}?{query}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.relay(self.path, head)

    def do_GET(self):
        self.handle_any(False)

    def do_HEAD(self):
        self.handle_any(True)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Front)
    print(f"oss-front listening {PORT}", flush=True)
    server.serve_forever()
