#!/usr/bin/env python3
"""The official clients against the stand-in: alibabacloud_cr20181201's Client (its default
ACS3-HMAC-SHA256 signature, and with temporary credentials), and alibabacloud_credentials'
default chain order for the environments poolcast documents. Exits 0 when all is as expected.

    sdk_client.py http://127.0.0.1:PORT INSTANCE_ID EXPECTED_DOMAIN AK SECRET
"""
import os
import sys

from alibabacloud_cr20181201.client import Client
from alibabacloud_cr20181201 import models as cr
from alibabacloud_tea_openapi import models as openapi
from Tea.exceptions import TeaException

base, instance, domain, ak, secret = sys.argv[1:6]
host = base.split("://", 1)[1]


def client(**creds):
    config = openapi.Config(endpoint=host, protocol="http", region_id="cn-hangzhou", **creds)
    return Client(config)


c = client(access_key_id=ak, access_key_secret=secret)
got = c.get_instance_vpc_endpoint(cr.GetInstanceVpcEndpointRequest(instance_id=instance, module_name="Registry"))
assert got.body.domains == [domain], got.body.to_map()
listed = c.list_instance_endpoint(cr.ListInstanceEndpointRequest(instance_id=instance, module_name="Registry"))
assert listed.body.endpoints and listed.body.endpoints[0].endpoint_type == "internet", listed.body.to_map()

# A wrong secret is refused with the service's code, as the SDK reports it.
try:
    client(access_key_id=ak, access_key_secret="wrong").get_instance_vpc_endpoint(
        cr.GetInstanceVpcEndpointRequest(instance_id=instance, module_name="Registry"))
    sys.exit("a wrong secret was accepted")
except TeaException as e:
    assert e.code == "SignatureDoesNotMatch", e.code

# The credentials SDK's default chain: environment AccessKey first, then RRSA (OIDC), then the
# ECS metadata server; the order poolcast's chain follows (alicloud/src/credentials.rs).
import importlib
os.environ.update({
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "id", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "s",
    "ALIBABA_CLOUD_ROLE_ARN": "acs:ram::1:role/r", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": "acs:ram::1:oidc-provider/p",
    "ALIBABA_CLOUD_OIDC_TOKEN_FILE": "/nonexistent",
})
from alibabacloud_credentials.utils import auth_util
importlib.reload(auth_util)
from alibabacloud_credentials.provider import default
importlib.reload(default)
chain = default.DefaultCredentialsProvider()._DefaultCredentialsProvider__providers_chain
names = [type(p).__name__ for p in chain]
order = [n for n in names if n in ("EnvironmentVariableCredentialsProvider", "OIDCRoleArnCredentialsProvider", "EcsRamRoleCredentialsProvider")]
assert order == ["EnvironmentVariableCredentialsProvider", "OIDCRoleArnCredentialsProvider", "EcsRamRoleCredentialsProvider"], names
print("sdk ok")
