"""Site isolation is enforced by the storage itself (a real SeaweedFS), not by convention."""

from __future__ import annotations

import boto3
import botocore
import pytest

from federation.exceptions import ConfigurationError
from federation.storage import AccessDenied, open_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def seeded(seaweed):  # type: ignore[no-untyped-def]
    """Objects of site-b in every area, written by site-b and by the pipeline."""
    seaweed.store("site-b").put_bytes("landing/site-b/u1/patients.csv", b"b's rows")
    pipe = seaweed.store("pipeline")
    pipe.put_bytes("reports/site-b/u1/report.html", b"b's report")
    pipe.put_bytes("harmonized/site-b/PONC-WT-01/_versions/000001.json", b"{}")
    pipe.put_bytes("reports/site-a/u1/report.html", b"a's report")
    pipe.put_bytes("harmonized/site-a/PONC-WT-01/_versions/000001.json", b"{}")
    pipe.put_bytes("pipeline/catalog/site-a/uploads/u1.json", b"{}")
    pipe.put_bytes("pipeline/catalog/site-b/uploads/u1.json", b"{}")
    return seaweed


B_KEYS = ["landing/site-b/u1/patients.csv", "reports/site-b/u1/report.html",
          "harmonized/site-b/PONC-WT-01/_versions/000001.json"]


@pytest.mark.parametrize("key", B_KEYS)
def test_site_a_cannot_read_site_b(seeded, key: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AccessDenied):
        seeded.store("site-a").get_bytes(key)


@pytest.mark.parametrize("key", B_KEYS + ["landing/site-b/u2/patients.csv"])
def test_site_a_cannot_write_site_b(seeded, key: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AccessDenied):
        seeded.store("site-a").put_bytes(key, b"overwritten by a")
    if key in B_KEYS:
        assert seeded.store("pipeline").get_bytes(key) != b"overwritten by a"


@pytest.mark.parametrize("prefix", ["landing/site-b/", "reports/site-b/", "harmonized/site-b/", "landing/",
                                    "harmonized/"])
def test_site_a_cannot_list_site_b(seeded, prefix: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AccessDenied):
        seeded.store("site-a").list(prefix)


def test_site_a_uses_its_own_areas(seeded) -> None:  # type: ignore[no-untyped-def]
    a = seeded.store("site-a")
    a.put_bytes("landing/site-a/u9/patients.csv", b"a's rows")
    assert [o.key for o in a.list("landing/site-a/u9/")] == ["landing/site-a/u9/patients.csv"]
    assert a.get_bytes("reports/site-a/u1/report.html") == b"a's report"
    with pytest.raises(AccessDenied):  # reports are written by the pipeline only
        a.put_bytes("reports/site-a/u1/report.html", b"forged")
    with pytest.raises(AccessDenied):  # harmonized data is not the site's to touch through the platform
        a.put_bytes("harmonized/site-a/PONC-WT-01/_versions/000002.json", b"{}")


def test_query_identity_reads_only_its_sites_harmonized_data(seeded) -> None:  # type: ignore[no-untyped-def]
    q = seeded.store("query-site-a")  # held by site-a's node only
    assert q.get_bytes("harmonized/site-a/PONC-WT-01/_versions/000001.json") == b"{}"
    # ... and its own uploads' statuses, which its coordinator asks for through the service; not the reports
    assert [o.key for o in q.list("pipeline/catalog/site-a/uploads/")] == ["pipeline/catalog/site-a/uploads/u1.json"]
    for key in [*B_KEYS, "landing/site-a/u9/patients.csv", "pipeline/catalog/site-b/uploads/u1.json",
                "reports/site-a/u1/report.html"]:
        with pytest.raises(AccessDenied):
            q.get_bytes(key)
    with pytest.raises(AccessDenied):
        q.put_bytes("pipeline/catalog/site-a/uploads/u1.json", b"forged")
    with pytest.raises(AccessDenied):
        q.list("pipeline/catalog/site-b/uploads/")
    with pytest.raises(AccessDenied):
        q.put_bytes("harmonized/site-a/PONC-WT-01/_versions/000009.json", b"{}")


def test_analysts_have_no_storage_access(seeded) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match="no storage credentials"):
        open_store(seeded.cfg, "analyst")
    anonymous = boto3.client("s3", endpoint_url=seeded.cfg.endpoint, region_name="us-east-1",
                             config=botocore.config.Config(signature_version=botocore.UNSIGNED))
    for key in ["harmonized/site-a/PONC-WT-01/_versions/000001.json", "reports/site-a/u1/report.html"]:
        bucket, _, path = key.partition("/")
        with pytest.raises(botocore.exceptions.ClientError):
            anonymous.get_object(Bucket=bucket, Key=path)
    with pytest.raises(botocore.exceptions.ClientError):
        anonymous.list_objects_v2(Bucket="harmonized")
    from federation.storage.s3 import S3Store

    forged = S3Store(seeded.cfg.endpoint, seeded.creds["site-a"].access_key, "not-the-secret", identity="forged")
    with pytest.raises(AccessDenied):
        forged.get_bytes("reports/site-a/u1/report.html")
