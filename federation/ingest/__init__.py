"""Ingestion: landing zone protocol, harmonization, publishing and the upload catalog."""
