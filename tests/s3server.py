"""An S3 server for tests and benchmarks: moto's server mode in a child process on a free
loopback port. It enforces request signing (`INITIAL_NO_AUTH_ACTION_COUNT`: the first few
calls, which create an IAM user and its access key, go unsigned), so wrong credentials are
refused as S3 refuses them."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

REGION = "us-east-1"
_UNSIGNED_CALLS = 4  # create_user, create_policy, attach_user_policy, create_access_key


@dataclass
class S3Server:
    url: str
    access_key: str
    secret_key: str
    buckets: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The standard AWS variables the service reads its credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance role
        }

    def client(self, **credentials: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=credentials.get("access_key", self.access_key),
            aws_secret_access_key=credentials.get("secret_key", self.secret_key),
            config=Config(s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        name = f"media-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _create_credentials(url: str) -> tuple[str, str]:
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="unsigned",
        aws_secret_access_key="unsigned",
    )
    iam.create_user(UserName="vectorsvc")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    arn = iam.create_policy(PolicyName="media", PolicyDocument=json.dumps(policy))["Policy"]["Arn"]
    iam.attach_user_policy(UserName="vectorsvc", PolicyArn=arn)
    key = iam.create_access_key(UserName="vectorsvc")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Start `moto_server` on a free loopback port; stop it on exit."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_UNSIGNED_CALLS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        access_key, secret_key = _create_credentials(url)
        yield S3Server(url=url, access_key=access_key, secret_key=secret_key)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
