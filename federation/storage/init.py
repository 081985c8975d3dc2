"""`federation storage init`: create the four buckets and prove that each can be written.

On S3 the buckets are created with the `storage-admin` identity (the only one allowed to); then the
pipeline identity writes, reads back and deletes a probe object in each bucket, which is what every
upload, report and publication will need. SeaweedFS grows volumes for a bucket on its first write and
answers "No writable volumes" when its volume limit is used up: the probe catches that at deployment
instead of at the first site's upload (the flags that avoid it are in docs/operations.md).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from federation.exceptions import FederationError
from federation.settings import Settings
from federation.storage import ObjectStore, open_store
from federation.storage.base import AccessDenied, StorageError
from federation.storage.identities import ADMIN

PROBE_PREFIX = "_federation/init-probe-"
VOLUME_HINT = ("SeaweedFS's volume limit is used up (every bucket is a collection with volumes of its own): start "
               "weed with -volume.max=200 -master.volumeSizeLimitMB=1024, as docker-compose.yml does "
               "(docs/operations.md, Storage)")
DENIED_HINT = ("the key in storage.secrets_dir does not match the storage's identities: write them again with "
               "`federation storage identities` and restart SeaweedFS so it reads them")
DENIED_WAIT_S = 30.0  # a starting SeaweedFS refuses every key until it has read its identities


class StorageInitError(FederationError):
    pass


@dataclass
class BucketState:
    bucket: str
    created: bool
    writable_after_s: float


def buckets_of(settings: Settings) -> list[str]:
    cfg = settings.storage
    return [cfg.landing_bucket, cfg.reports_bucket, cfg.harmonized_bucket, cfg.pipeline_bucket]


def init_storage(settings: Settings, wait_s: float = 120.0,
                 progress: Callable[[str], None] = lambda _m: None) -> list[BucketState]:
    """Create the buckets (if missing) and check each is writable, waiting up to `wait_s` for storage that
    is still starting. Raises StorageInitError saying which bucket failed and why."""
    cfg = settings.storage
    created: dict[str, bool] = {}
    deadline = time.monotonic() + wait_s
    admin = open_store(cfg, ADMIN) if cfg.kind == "s3" else None
    for bucket in buckets_of(settings):
        if admin is None:
            path = cfg.root / bucket
            created[bucket] = not path.is_dir()
            path.mkdir(parents=True, exist_ok=True)
        else:
            from federation.storage.s3 import S3Store

            assert isinstance(admin, S3Store)
            created[bucket] = _retry(functools.partial(admin.create_bucket, bucket), deadline,
                                     f"create bucket {bucket} as {ADMIN}", s3=True)
        progress(f"bucket {bucket}: {'created' if created[bucket] else 'exists'}")
    store = open_store(cfg, "pipeline")
    out = []
    for bucket in buckets_of(settings):
        t0 = time.monotonic()
        _retry(functools.partial(_probe, store, bucket), deadline, f"write to bucket {bucket} as the pipeline",
               s3=cfg.kind == "s3")
        out.append(BucketState(bucket, created[bucket], round(time.monotonic() - t0, 2)))
        progress(f"bucket {bucket}: writable")
    return out


def _probe(store: ObjectStore, bucket: str) -> bool:
    key = f"{bucket}/{PROBE_PREFIX}{uuid.uuid4().hex}"
    data = uuid.uuid4().bytes
    store.put_bytes(key, data)
    try:
        if store.get_bytes(key) != data:
            raise StorageInitError(f"bucket {bucket}: a probe object read back different bytes")
    finally:
        store.delete(key)
    return True


def _retry(fn: Callable[[], bool], deadline: float, what: str, s3: bool = False) -> bool:
    """Run `fn` until it succeeds or the deadline passes (storage still starting, volumes still growing); a
    refused key is retried only while a starting SeaweedFS may not have read its identities yet."""
    delay, started = 0.5, time.monotonic()
    while True:
        try:
            return fn()
        except (StorageError, OSError) as exc:
            denied = isinstance(exc, AccessDenied)
            give_up = time.monotonic() + delay > (min(deadline, started + DENIED_WAIT_S) if denied else deadline)
            if give_up:
                hint = (DENIED_HINT if denied else VOLUME_HINT if "No writable volumes" in str(exc)
                        else "" if s3 else "check the folder's permissions and free space")
                raise StorageInitError(f"could not {what}: {exc}" + (f"; {hint}" if hint else "")) from None
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
