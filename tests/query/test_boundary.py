"""What crosses the trust boundary: every answer a site node can give is a summary, and nothing in the
site part needs the central part (importable and testable without the service)."""

from __future__ import annotations

import subprocess
import sys
import typing
from typing import Any, get_args, get_origin

import pydantic

from federation.query.policy import ConsortiumDisclosurePolicy
from federation.query.site import summaries as sm
from federation.query.site.partial import SiteTask, answer_task
from federation.settings import Settings
from tests.federated import STUDY, pooled

ROW_WORDS = ("pid", "patient", "row", "record", "value", "values", "time", "times", "date", "day", "raw")
SCALARS = {int, float, bool, str, type(None)}


def _leaves(annotation: Any) -> list[Any]:
    """The scalar types and answer models a field annotation can hold."""
    origin = get_origin(annotation)
    if origin is None:
        return [annotation]
    if origin is typing.Literal:
        return [str]
    return [leaf for arg in get_args(annotation) for leaf in _leaves(arg)]


def _answer_models() -> list[type[pydantic.BaseModel]]:
    union = get_args(get_args(sm.AnyAnswer)[0])
    seen: list[type[pydantic.BaseModel]] = []
    todo = list(union)
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for f in model.model_fields.values():
            todo += [leaf for leaf in _leaves(f.annotation) if isinstance(leaf, type) and issubclass(leaf, sm.Answer)]
    return seen


def test_every_answer_type_holds_only_summary_fields() -> None:
    models = _answer_models()
    assert {m.__name__ for m in models} >= {"Counts", "Moments", "KmIntervals", "ModelSums", "Refusal", "AtOrBelow"}
    for model in models:
        assert model.model_config.get("extra") == "forbid", model  # no field can be smuggled in
        for name, f in model.model_fields.items():
            assert not any(w == part for w in ROW_WORDS for part in name.split("_")), (model, name)
            for leaf in _leaves(f.annotation):
                assert leaf in SCALARS or (isinstance(leaf, type) and issubclass(leaf, sm.Answer)), (model, name, leaf)


def test_answers_over_real_data_are_sized_by_groups_and_grid_not_by_patients(federated: Settings) -> None:
    n_patients = pooled(federated, "SELECT count(*) FROM patients WHERE site_id = 'site-b'")[0][0]
    requests = [sm.GroupCounts(dims=["arm"]), sm.ColumnMoments(column="os_days", dims=["sex"]),
                sm.KmCounts(endpoint="efs", grid_days=30.4375, horizon_days=3652.5, dims=["arm"]),
                sm.ValueCounts(column="age_at_diagnosis_years")]
    reply = answer_task(federated, "site-b", SiteTask(study_id=STUDY, thresholds=ConsortiumDisclosurePolicy(),
                                                      requests=requests))
    counts, moments, km, values = reply.answers
    assert isinstance(counts, sm.Counts) and len(counts.cells) <= 5
    assert sum(c.n for c in counts.cells) == n_patients
    assert isinstance(moments, sm.Moments) and len(moments.cells) <= 3
    assert isinstance(km, sm.KmIntervals) and all(len(g.at_risk) == 120 for g in km.groups)
    # quantiles start from a count only: no minimum, maximum or bracket of the values leaves the site
    assert isinstance(values, sm.Counts) and [c.n for c in values.cells] == [n_patients]
    assert set(sm.Cell.model_fields) == {"key", "n", "patients", "sketch"}


def test_the_site_part_imports_without_the_central_part_or_the_service() -> None:
    code = ("import sys; import federation.query.site.partial, federation.node; "
            "bad = [m for m in sys.modules if m.startswith(('federation.query.central.statistics', "
            "'federation.query.central.runner', 'federation.service', 'fastapi', 'uvicorn'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_site_evaluates_only_the_splits_a_statistic_shows(federated: Settings) -> None:
    """The differencing check asks sites for the parts of earlier results' groups (a curve's number at risk
    at a time): only at Kaplan-Meier times the policy declares, never at an arbitrary threshold."""
    from federation.query.model import Filter

    def sizes(split: list[Filter]) -> Any:
        request = sm.FootprintSizes(subsets=[sm.Subset(split=split)], items=[sm.Sized(subset=0, version=1)])
        (answer,) = answer_task(federated, "site-b", SiteTask(study_id=STUDY, thresholds=ConsortiumDisclosurePolicy(),
                                                              requests=[request])).answers
        return answer

    at_risk = sizes([Filter(column="os_days", op=">=", value=730.5)])  # two years on the yearly grid
    assert isinstance(at_risk, sm.SizeLists)
    (cell,) = at_risk.items[0]
    assert cell.n == pooled(federated, "SELECT count(*) FROM unit_patients WHERE site_id = 'site-b' "
                                       "AND os_days >= 730.5")[0][0]
    for off in ([Filter(column="os_days", op=">=", value=731.0)], [Filter(column="os_days", op="==", value=730.5)],
                [Filter(column="age_at_diagnosis_years", op=">=", value=1.37)]):
        refused = sizes(off)
        assert isinstance(refused, sm.Refusal), off
