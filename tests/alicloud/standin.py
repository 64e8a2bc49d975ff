#!/usr/bin/env python3
"""A stand-in for the Alibaba Cloud endpoints poolcast calls: the ACR OpenAPI (cr 2018-12-01,
GetInstanceVpcEndpoint and ListInstanceEndpoint), STS (AssumeRoleWithOIDC, AssumeRole) and the
ECS metadata server (IMDSv2 token, region-id, vpc-id, RAM role credentials), on one port.

It is made trustworthy with the vendor's own code: every signature is recomputed with the
official SDK's helpers (alibabacloud_tea_openapi.utils.Utils.get_authorization for
ACS3-HMAC-SHA256, Utils.get_rpcsignature for HMAC-SHA1 V1) and compared, and the ACR answers are
built with alibabacloud_cr20181201's response models. Errors have the service's shape
(RequestId, Code, Message).

    standin.py STATE.json      # prints "standin listening http://127.0.0.1:PORT"

STATE.json (read at start; POST /_control with a JSON object merges keys into it):
    keys        {AccessKeyId: secret}             long-term AccessKeys
    denied      [AccessKeyId or role ARN]         callers that get Forbidden.RAM
    instances   {id: {vpcDomains, linkedVpcs: [[vpc, status]], internetDomains, internetEnable}}
    oidc        {roleArn, providerArn, token}     what AssumeRoleWithOIDC accepts
    roles       [role ARN]                        what AssumeRole accepts
    metadata    {region, vpc, role, requireToken}
    stsSeconds  lifetime of issued credentials (default 3600)
    down        true: every OpenAPI call answers 503
GET /_log returns every request seen, as a JSON list.
"""
import hashlib
import json
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from alibabacloud_cr20181201 import models as cr
from alibabacloud_tea_openapi.utils import Utils

LOCK = threading.Lock()
STATE = {}
LOG = []
ISSUED = {}  # AccessKeyId -> {secret, token, expires, role}
NONCES = set()
META_TOKENS = set()


def now():
    return datetime.now(timezone.utc)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Refused(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def issue(role, principal):
    ak = "STS." + uuid.uuid4().hex[:16]
    creds = {
        "secret": uuid.uuid4().hex,
        "token": "token-" + uuid.uuid4().hex,
        "expires": now() + timedelta(seconds=STATE.get("stsSeconds", 3600)),
        "role": role,
        "principal": principal,
    }
    ISSUED[ak] = creds
    return {
        "AccessKeyId": ak,
        "AccessKeySecret": creds["secret"],
        "SecurityToken": creds["token"],
        "Expiration": iso(creds["expires"]),
    }


def secret_of(ak, token):
    """The secret of AccessKey `ak`, checking the security token of temporary ones."""
    if ak in STATE.get("keys", {}):
        return STATE["keys"][ak], ak
    creds = ISSUED.get(ak)
    if creds is None:
        raise Refused(404, "InvalidAccessKeyId.NotFound", f"Specified access key is not found: {ak}")
    if token != creds["token"]:
        raise Refused(400, "InvalidSecurityToken.MismatchWithAccessKey", "The security token does not match the access key.")
    if creds["expires"] <= now():
        raise Refused(400, "InvalidSecurityToken.Expired", "Specified SecurityToken is expired.")
    return creds["secret"], creds["role"]


def check_fresh(date_text, nonce):
    try:
        at = datetime.strptime(date_text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        raise Refused(400, "InvalidTimeStamp.Format", f"Specified time stamp or date value is not well formatted: {date_text}")
    if abs((now() - at).total_seconds()) > 900:
        raise Refused(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
    if not nonce or nonce in NONCES:
        raise Refused(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
    NONCES.add(nonce)


class Req:
    """What get_authorization reads: method, pathname, query, headers."""

    def __init__(self, method, pathname, query, headers):
        self.method, self.pathname, self.query, self.headers = method, pathname, query, headers


def verify(method, path, query, headers, body, form):
    """Checks the request's signature with the SDK's own code; returns (caller, style, token)."""
    auth = headers.get("authorization", "")
    if auth.startswith("ACS3-HMAC-SHA256 "):
        fields = dict(p.split("=", 1) for p in auth[len("ACS3-HMAC-SHA256 "):].split(","))
        signed = fields.get("SignedHeaders", "").split(";")
        for needed in ("host", "x-acs-action", "x-acs-version", "x-acs-date",
                       "x-acs-signature-nonce", "x-acs-content-sha256"):
            if needed not in signed:
                raise Refused(400, "SignatureDoesNotMatch", f"The header {needed} must be signed.")
        token = headers.get("x-acs-security-token")
        if token is not None and "x-acs-security-token" not in signed:
            raise Refused(400, "SignatureDoesNotMatch", "The header x-acs-security-token must be signed.")
        payload = hashlib.sha256(body).hexdigest()
        if headers.get("x-acs-content-sha256") != payload:
            raise Refused(400, "ContentSHA256NotMatched", "x-acs-content-sha256 is not the SHA-256 of the body.")
        check_fresh(headers.get("x-acs-date"), headers.get("x-acs-signature-nonce"))
        ak = fields.get("Credential", "")
        secret, caller = secret_of(ak, token)
        req = Req(method, path, query, {h: headers.get(h, "") for h in signed})
        expected = Utils.get_authorization(req, "ACS3-HMAC-SHA256", payload, ak, secret)
        if expected != auth:
            raise Refused(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        return caller, "ACS3-HMAC-SHA256", token
    params = dict(query)
    params.update(form)
    signature = params.pop("Signature", None)
    if signature is None:
        raise Refused(400, "MissingSignature", "Signature is mandatory for this action.")
    if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
        raise Refused(400, "InvalidSignatureMethod", "Specified signature method is not supported.")
    check_fresh(params.get("Timestamp"), params.get("SignatureNonce"))
    token = params.get("SecurityToken")
    secret, caller = secret_of(params.get("AccessKeyId", ""), token)
    if Utils.get_rpcsignature(params, method, secret) != signature:
        raise Refused(400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
    return caller, "HMAC-SHA1", token


def sts(action, params, caller):
    duration = int(params.get("DurationSeconds", "3600"))
    if action == "AssumeRoleWithOIDC":
        want = STATE.get("oidc", {})
        if params.get("OIDCToken") != want.get("token"):
            raise Refused(400, "AuthenticationFail.OIDCToken.Invalid", "The OIDC token is invalid.")
        if params.get("OIDCProviderArn") != want.get("providerArn") or params.get("RoleArn") != want.get("roleArn"):
            raise Refused(403, "AuthenticationFail.NoPermission", "The role does not trust this OIDC provider.")
        principal = "oidc"
    else:
        if params.get("RoleArn") not in STATE.get("roles", []) or caller in STATE.get("denied", []):
            raise Refused(403, "NoPermission", f"You are not authorized to do this action. You should be authorized by RAM. (caller {caller})")
        principal = caller
    if not 900 <= duration <= 43200:
        raise Refused(400, "InvalidParameter.DurationSeconds", "DurationSeconds is out of range.")
    return {"RequestId": str(uuid.uuid4()), "AssumedRoleUser": {"Arn": params["RoleArn"]},
            "Credentials": issue(params["RoleArn"], principal)}


def acr(action, params, caller):
    if caller in STATE.get("denied", []):
        raise Refused(403, "Forbidden.RAM", f"User not authorized to operate on the specified resource, or this API doesn't support RAM. (action cr:{action})")
    instance_id = params.get("InstanceId", "")
    inst = STATE.get("instances", {}).get(instance_id)
    if inst is None:
        return {"Code": "INSTANCE_NOT_EXIST", "IsSuccess": False, "Message": "instance not exist",
                "RequestId": str(uuid.uuid4())}
    if params.get("ModuleName") != "Registry":
        raise Refused(400, "PARAM_INVALID", "ModuleName must be Registry here.")
    if action == "GetInstanceVpcEndpoint":
        body = cr.GetInstanceVpcEndpointResponseBody(
            code="success", is_success=True, enable=True, module_name="Registry",
            request_id=str(uuid.uuid4()), domains=list(inst.get("vpcDomains", [])),
            linked_vpcs=[cr.GetInstanceVpcEndpointResponseBodyLinkedVpcs(
                vpc_id=v, status=s, vswitch_id="vsw-standin", ip="192.0.2.10", default_access=False)
                for v, s in inst.get("linkedVpcs", [])])
    else:
        endpoints = [cr.ListInstanceEndpointResponseBodyEndpoints(
            endpoint_type="internet", enable=inst.get("internetEnable", True), status="RUNNING",
            acl_enable=True, domains=[cr.ListInstanceEndpointResponseBodyEndpointsDomains(domain=d, type="SYSTEM")
                                      for d in inst.get("internetDomains", [])])]
        if inst.get("vpcDomains"):
            endpoints.append(cr.ListInstanceEndpointResponseBodyEndpoints(
                endpoint_type="vpc", enable=True, status="RUNNING",
                domains=[cr.ListInstanceEndpointResponseBodyEndpointsDomains(domain=d, type="SYSTEM")
                         for d in inst["vpcDomains"]],
                linked_vpcs=[cr.ListInstanceEndpointResponseBodyEndpointsLinkedVpcs(vpc_id=v)
                             for v, _ in inst.get("linkedVpcs", [])]))
        body = cr.ListInstanceEndpointResponseBody(code="success", is_success=True,
                                                   request_id=str(uuid.uuid4()), endpoints=endpoints)
    return body.to_map()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("standin: " + fmt % args + "\n")

    def reply(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def do_PUT(self):
        self.body()
        if self.path == "/latest/api/token":
            token = uuid.uuid4().hex
            with LOCK:
                META_TOKENS.add(token)
                LOG.append({"kind": "metadata-token", "ttl": self.headers.get("X-aliyun-ecs-metadata-token-ttl-seconds")})
            return self.reply(200, token.encode(), "text/plain")
        self.reply(404, b"not found", "text/plain")

    def do_GET(self):
        if self.path == "/_log":
            with LOCK:
                return self.reply(200, LOG)
        if self.path.startswith("/latest/meta-data/"):
            return self.metadata(self.path[len("/latest/meta-data/"):])
        self.openapi(b"")

    def do_POST(self):
        body = self.body()
        if self.path == "/_control":
            with LOCK:
                STATE.update(json.loads(body))
            return self.reply(200, {"ok": True})
        self.openapi(body)

    def metadata(self, what):
        with LOCK:
            meta = STATE.get("metadata", {})
            token = self.headers.get("X-aliyun-ecs-metadata-token")
            LOG.append({"kind": "metadata", "path": what, "token": token is not None})
            if meta.get("requireToken", True) and token not in META_TOKENS:
                return self.reply(401, b"token required", "text/plain")
            role = meta.get("role", "")
            if what == "region-id" and meta.get("region"):
                return self.reply(200, meta["region"].encode(), "text/plain")
            if what == "vpc-id" and meta.get("vpc"):
                return self.reply(200, meta["vpc"].encode(), "text/plain")
            if what == "ram/security-credentials/" and role:
                return self.reply(200, role.encode(), "text/plain")
            if role and what == "ram/security-credentials/" + role:
                creds = issue("ecs:" + role, "metadata")
                creds.update({"Code": "Success", "LastUpdated": iso(now())})
                return self.reply(200, creds)
            self.reply(404, b"not found", "text/plain")

    def openapi(self, body):
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        form = {}
        if body and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        params = dict(query)
        params.update(form)
        action = headers.get("x-acs-action") or params.get("Action", "")
        entry = {"kind": "openapi", "action": action, "method": self.command}
        with LOCK:
            LOG.append(entry)
            try:
                if STATE.get("down"):
                    raise Refused(503, "ServiceUnavailable", "The request has failed due to a temporary failure of the server.")
                if action == "AssumeRoleWithOIDC":
                    caller, style, token = "anonymous", "anonymous", None
                else:
                    caller, style, token = verify(self.command, url.path or "/", query, headers, body, form)
                entry.update({"caller": caller, "signature": style, "securityToken": token is not None,
                              "durationSeconds": params.get("DurationSeconds")})
                if action in ("AssumeRoleWithOIDC", "AssumeRole"):
                    answer = sts(action, params, caller)
                elif action in ("GetInstanceVpcEndpoint", "ListInstanceEndpoint"):
                    answer = acr(action, params, caller)
                else:
                    raise Refused(400, "InvalidAction.NotFound", f"Specified api is not found: {action}")
                entry["code"] = answer.get("Code", "ok")
                return self.reply(200, answer)
            except Refused as e:
                entry["code"] = e.code
                return self.reply(e.status, {"RequestId": str(uuid.uuid4()), "HostId": self.headers.get("host", ""),
                                             "Code": e.code, "Message": e.message,
                                             "Recommend": "https://api.aliyun.com/troubleshoot"})


def main():
    with open(sys.argv[1]) as f:
        STATE.update(json.load(f))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"standin listening http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
