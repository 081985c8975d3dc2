"""Logistic regression and Cox regression stratified by site, by Newton-Raphson on summed per-site score
vectors and information matrices (site halves: `ModelLevels`, `ModelTerms`). Each site checks that its
rows can safely support the model (`SiteModelGuard`); the fit equals the pooled maximum-likelihood fit
(for Cox: the pooled fit stratified by site)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from federation.query.central.combine import newton_step, z_test
from federation.query.central.statistics.base import Statistic
from federation.query.central.statistics.counts import check_filters
from federation.query.columns import EmptyCellGuard, check_comparison, check_groupable, require, unit_columns
from federation.query.guard import QueryRefused
from federation.query.model import Query
from federation.query.policy import QueryPolicy
from federation.query.site.summaries import Answer, Label, ModelLevels, ModelProfile, ModelSums, ModelTerms, Request

if TYPE_CHECKING:
    from federation.query.central.runner import Context

Z95 = 1.959963984540054


class Regression(Statistic):
    per_site = False  # only combined values are released
    model: ClassVar[Literal["logistic", "cox"]]
    ratio_name: ClassVar[str]

    def check(self, q: Query, policy: QueryPolicy) -> None:
        if q.table != "patients":
            raise QueryRefused("models are fitted on patients (one row each): an event table repeats patients",
                               "use --table patients, with an --exists filter on the events you need")
        check_filters(q, policy)
        for c in q.covariates:
            require(policy, q.study_id, q.table, c, "a covariate")
            if unit_columns(q.study_id, q.table).get(c) in ("string", "bool"):
                check_groupable(policy, q.study_id, q.table, c)

    def spec(self, q: Query) -> dict[str, Any]:
        return {"table": q.table, "filters": q.filters, "exists": q.exists, "model": self.model,
                "covariates": q.covariates, "outcome": q.outcome, "endpoint": q.endpoint}

    def requests(self, q: Query) -> list[Request]:
        return [ModelLevels(**self.spec(q))]

    def terms_of(self, q: Query, levels: dict[str, list[Label]]) -> list[str]:
        names = ["(intercept)"] if self.model == "logistic" else []
        for c in q.covariates:
            names += [f"{c}[{level}]" for level in levels[c][1:]] if c in levels else [c]
        return names

    def fit(self, ctx: Context, answers: dict[str, list[Answer]]) -> tuple[list[str], dict[str, Any]]:
        q = ctx.query
        found: dict[str, set[Label]] = {}
        for _, (profile,) in answers.items():
            assert isinstance(profile, ModelProfile)
            for lc in profile.levels:
                found.setdefault(lc.covariate, set()).add(lc.level)
        levels = {c: sorted(v, key=str) for c, v in found.items()}
        if EmptyCellGuard.enabled():  # the dictionary's categories (an absent one is an empty cell)
            declared = ModelLevels(**self.spec(q)).declared_levels(ctx.policy, q.study_id)
            if any(set(found.get(c, ())) - set(v) for c, v in declared.items()):
                raise QueryRefused("a site's published data holds a category outside the data dictionary's list",
                                   "ask the data team to validate and re-publish that site's data")
            levels = declared
        names = self.terms_of(q, levels)

        def terms(beta: np.ndarray) -> list[ModelSums]:
            replies = ctx.ask([ModelTerms(**self.spec(q), levels=levels, beta=beta.tolist())])
            out = []
            for (sums,) in replies.values():
                assert isinstance(sums, ModelSums)
                out.append(sums)
            return out

        p = len(names)
        beta, info, loglik, iterations, converged = np.zeros(p), np.eye(p), 0.0, 0, False
        sums: list[ModelSums] = []
        for iterations in range(1, 51):  # noqa: B007 - the count is reported
            sums = terms(beta)
            score = sum((np.asarray(s.score) for s in sums), np.zeros(p))
            info = sum((np.asarray(s.information) for s in sums), np.zeros((p, p)))
            new = newton_step(beta, score, info)
            done = bool(np.max(np.abs(new - beta)) < 1e-10)
            beta = new
            if done:
                converged = True
                break
        sums = terms(beta)  # information and log-likelihood at the final estimate
        info = sum((np.asarray(s.information) for s in sums), np.zeros((p, p)))
        loglik = float(sum(s.loglik for s in sums))
        se = np.sqrt(np.diag(np.linalg.inv(info)))
        z, pv = z_test(beta, se)
        coefficients = []
        for n, b, e, zz, pp in zip(names, beta, se, z, pv, strict=True):
            coefficients.append({"term": n, "estimate": float(b), "se": float(e), "z": float(zz), "p": float(pp),
                                 "ci95": [float(b - Z95 * e), float(b + Z95 * e)], self.ratio_name: float(np.exp(b)),
                                 f"{self.ratio_name}_ci95": [float(np.exp(b - Z95 * e)), float(np.exp(b + Z95 * e))]})
        return names, {"n": sum(s.n for s in sums), "events": sum(s.events for s in sums), "iterations": iterations,
                       "converged": converged, "log_likelihood": loglik, "coefficients": coefficients}


class Logistic(Regression):
    names = ("logistic",)
    model = "logistic"
    ratio_name = "odds_ratio"

    def check(self, q: Query, policy: QueryPolicy) -> None:
        if q.outcome is None or not q.covariates:
            raise QueryRefused("logistic regression needs --outcome and at least one --covariate")
        super().check(q, policy)
        require(policy, q.study_id, q.table, q.outcome.column, "the outcome")
        check_comparison(policy, q.study_id, q.table, q.outcome.column, q.outcome.op, q.outcome.value)

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        assert ctx.query.outcome is not None
        _, fit = self.fit(ctx, answers)
        ctx.result.notes.append("fitted by Newton-Raphson on summed per-site score vectors and information "
                                "matrices; equals the pooled maximum-likelihood fit")
        fit.pop("events")
        return {"statistic": "logistic", "outcome": ctx.query.outcome.describe(), **fit}


class Cox(Regression):
    names = ("cox",)
    model = "cox"
    ratio_name = "hazard_ratio"

    def check(self, q: Query, policy: QueryPolicy) -> None:
        if q.table != "patients":
            raise QueryRefused("survival models are computed on patients", "use --table patients")
        if not q.covariates:
            raise QueryRefused("a Cox model needs at least one --covariate")
        super().check(q, policy)

    def combine(self, ctx: Context, answers: dict[str, list[Answer]]) -> dict[str, Any]:
        _, fit = self.fit(ctx, answers)
        ctx.result.notes.append("Cox proportional hazards stratified by site (each site its own baseline hazard, "
                                "Breslow ties), fitted by Newton-Raphson on summed per-site scores and information "
                                "matrices; equals the pooled fit stratified by site")
        return {"statistic": "cox", "endpoint": ctx.query.endpoint, **fit}
