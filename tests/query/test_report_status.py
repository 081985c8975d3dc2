"""The consortium report's data status: whose data each study's tables use, and whose latest upload is missing."""

from __future__ import annotations

from federation.ingest.pipeline import CatalogEntry
from federation.query.report import data_status


def _entry(site: str, status: str, uploaded: str, study: str = "PONC-WT-01") -> CatalogEntry:
    return CatalogEntry(site, f"u-{site}-{uploaded}", status, study_id=study, uploaded=f"{uploaded}T12:00:00+00:00")


def test_a_quarantined_site_is_named_with_what_is_used_instead() -> None:
    uploads = [  # newest first, as list_uploads gives them
        _entry("site-b", "quarantined", "2026-12-01"),
        _entry("site-c", "failed", "2026-11-30"),
        _entry("site-a", "published", "2026-11-29"),
        _entry("site-b", "published", "2026-06-30"),
        _entry("site-d", "published", "2026-06-30", study="PONC-NB-02"),
    ]
    text = data_status("PONC-WT-01", uploads)
    assert "published data of site-a, site-b." in text
    assert ("site-b: the upload of 2026-12-01 was quarantined (it broke validation rules; the site has the "
            "report). Its earlier published data is used.") in text
    assert "site-c: the upload of 2026-11-30 could not be processed" in text and "No data of this site is used" in text
    assert "site-a:" not in text and "site-d" not in text  # published latest; another study
    assert data_status("PONC-NB-02", uploads).startswith("<p class='status'>Data status: published data of site-d.")
    assert "no site has uploaded data" in data_status("PONC-ALL-03", uploads)
