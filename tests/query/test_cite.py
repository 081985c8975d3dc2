"""How a differencing refusal names the earlier results involved: the analyst's own described, another
analyst's by audit number only, and a long list cut short with how many more."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from federation.query.central.guards import CITED, cite
from federation.query.central.history import Earlier


def earlier(audit_id: int, analyst: str) -> Earlier:
    return Earlier(footprint=None, audit_id=audit_id, analyst=analyst,  # type: ignore[arg-type]
                   described=f"count #{audit_id}")


def text(analyst: str, found: list[Earlier], involved: list[int]) -> str:
    ctx: Any = SimpleNamespace(result=SimpleNamespace(analyst=analyst))
    return cite(ctx, found, involved, n_new=1)


def test_own_results_are_described_and_anothers_only_numbered() -> None:
    found = [earlier(7, "eve"), earlier(3, "mallory"), earlier(7, "eve")]  # one result, two of its parts
    said = text("mallory", found, [0, 1, 2, 3])  # index 0 is the new result itself
    assert said == "your earlier result #3 (count #3) and an earlier result released to another analyst (audit #7)"


def test_many_results_are_cut_short_with_how_many_more() -> None:
    found = [earlier(i, "eve") for i in range(100, 170)] + [earlier(i, "mallory") for i in range(1, 9)]
    said = text("mallory", found, list(range(1, len(found) + 1)))
    assert said.count("your earlier result #") == CITED and "3 more of your earlier results" in said
    assert ("70 earlier results released to other analysts (audit #100, audit #101, audit #102, audit #103, "
            "audit #104 and 65 more)") in said
    assert "#105" not in said and "count #1" in said and "count #6" not in said
    assert text("mallory", found, [0]) == "an earlier result"  # only the new result itself
