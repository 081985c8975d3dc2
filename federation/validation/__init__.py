"""Validation of a site export against the data dictionary, with Great Expectations."""
