"""Great Expectations Data Docs of one validation, built next to the report and linked from it.

The suites run in two passes (runner.py): every expectation cheaply, then the failing ones with every failing
row. For Data Docs each table's results are the first pass with the failing expectations' detailed results put
in their place, trimmed to GX's summary (counts and up to 20 example values; the report and failures.csv have
every failing cell), so the pages stay small whatever the export's size. An export checked in parts has one
page per table and part.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY_KEYS = ("element_count", "missing_count", "missing_percent", "unexpected_count", "unexpected_percent",
                "unexpected_percent_total", "unexpected_percent_nonmissing", "partial_unexpected_list",
                "partial_unexpected_counts", "observed_value")
EXAMPLES = 20


@dataclass
class DocsEntry:
    file: str
    part: int  # 1-based
    parts: int
    result: Any  # great_expectations ExpectationSuiteValidationResult

    @property
    def batch(self) -> str:
        return self.file if self.parts == 1 else f"{self.file}-part-{self.part}-of-{self.parts}"


def expectation_key(type_: str, kwargs: dict[str, Any], meta: dict[str, Any]) -> tuple[Any, ...]:
    """What tells two expectations of a suite apart: GX returns results in its own order, so a result is matched
    to its expectation by type, rule and columns."""
    return (type_, meta.get("rule"), meta.get("column"), kwargs.get("column"), kwargs.get("column_A"),
            kwargs.get("column_B"))


def result_key(result: Any) -> tuple[Any, ...]:
    config = result.expectation_config
    return expectation_key(config.type, config.kwargs, config.meta or {})


def for_docs(first_pass: Any, detailed: list[Any]) -> Any:
    """The first pass's suite result, with each failing expectation's detailed result (trimmed) in its place."""
    by_key = {result_key(r): r for r in detailed}
    merged = copy.copy(first_pass)
    results = []
    for r in first_pass.results:
        d = by_key.get(result_key(r))
        if d is not None:
            d = copy.copy(d)
            summary = {k: v for k, v in (d.result or {}).items() if k in SUMMARY_KEYS}
            for k in ("partial_unexpected_list", "partial_unexpected_counts"):
                if isinstance(summary.get(k), list):
                    summary[k] = summary[k][:EXAMPLES]
            d.result = summary
            results.append(d)
        else:
            results.append(r)
    merged.results = results
    return merged


def build(entries: list[DocsEntry], folder: Path, run_name: str) -> Path:
    """Write the Data Docs site of `entries` into `folder`; returns its index.html."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(site_name="report", site_config={  # type: ignore[typeddict-item]
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder.resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    for entry in entries:
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=entry.result.suite_name),
            run_id=RunIdentifier(run_name=run_name), batch_identifier=entry.batch)
        context.validation_results_store.set(key, entry.result)
    context.build_data_docs(site_names=["report"])
    return folder / "index.html"
