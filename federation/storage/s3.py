"""S3-compatible storage (SeaweedFS, MinIO, AWS S3) through boto3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from federation.storage.base import (
    AccessDenied,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StorageError,
    TransientStorageError,
    split_key,
)

_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT = {"SlowDown", "ServiceUnavailable", "InternalError", "503", "500", "RequestTimeout"}


class S3Store(ObjectStore):
    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1",
                 identity: str = "") -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name=region,
            config=botocore.config.Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                                          retries={"max_attempts": 3, "mode": "standard"}),
        )

    def _call(self, key: str, fn: Any, **kw: Any) -> Any:
        try:
            return fn(**kw)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _DENIED:
                raise AccessDenied(f"{self.identity or 'this identity'} may not access {key} ({code})") from None
            if code in _MISSING:
                raise KeyError(key) from None
            if code in ("PreconditionFailed", "412"):
                raise PreconditionFailed(f"{key} already exists") from None
            if code in _TRANSIENT:
                raise TransientStorageError(f"storage at {self.endpoint} answered {code} for {key}") from exc
            raise StorageError(f"storage error on {key}: {code} {exc}") from exc
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectTimeoutError) as exc:
            raise TransientStorageError(f"storage at {self.endpoint} is unreachable: {exc}") from exc

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        bucket, path = split_key(key)
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        self._call(key, self.client.put_object, Bucket=bucket, Key=path, Body=data, **extra)

    def put_file(self, key: str, path: Path) -> None:
        bucket, obj = split_key(key)
        with path.open("rb") as fh:
            self._call(key, self.client.put_object, Bucket=bucket, Key=obj, Body=fh)

    def get_bytes(self, key: str) -> bytes:
        bucket, path = split_key(key)
        body = self._call(key, self.client.get_object, Bucket=bucket, Key=path)["Body"]
        data: bytes = body.read()
        return data

    def download(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        bucket, obj = split_key(key)
        body = self._call(key, self.client.get_object, Bucket=bucket, Key=obj)["Body"]
        with path.open("wb") as fh:
            for chunk in iter(lambda: body.read(1 << 20), b""):
                fh.write(chunk)

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, path = split_key(prefix)
        out: list[ObjectInfo] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": path}
            if token:
                kw["ContinuationToken"] = token
            page = self._call(prefix, self.client.list_objects_v2, **kw)
            out += [ObjectInfo(f"{bucket}/{o['Key']}", int(o["Size"])) for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
        return sorted(out, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        bucket, path = split_key(key)
        try:
            self._call(key, self.client.head_object, Bucket=bucket, Key=path)
        except KeyError:
            return False
        return True

    def delete(self, key: str) -> None:
        bucket, path = split_key(key)
        self._call(key, self.client.delete_object, Bucket=bucket, Key=path)

    def create_bucket(self, bucket: str) -> bool:
        """Create `bucket`; False when it exists already (this identity needs the Admin action)."""
        try:
            self._call(bucket, self.client.create_bucket, Bucket=bucket)
        except StorageError as exc:
            if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                return False
            raise
        return True

    def describe(self) -> str:
        return f"S3 endpoint {self.endpoint} as {self.identity or 'anonymous'}"
