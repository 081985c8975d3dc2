"""The analyst's client: ask the query service, get tables and plots (for notebooks and scripts).

    from federation.client import Client
    c = Client("http://127.0.0.1:8700")            # token from FEDERATION_TOKEN or the credentials file
    r = c.query("PONC-WT-01", statistic="km", endpoint="efs", group_by=["arm"])
    r.combined          # pandas DataFrame; suppressed values are missing, with suppressed=True
    r.per_site          # the same per site
    r.plot()            # Kaplan-Meier with risk table, or bars of counts

The client holds no storage credential and no rule: it only sends questions with its token.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import httpx

from federation.exceptions import FederationError
from federation.query.central.runner import Result
from federation.query.model import Query
from federation.secretfile import token_from

TOKEN_ENV = "FEDERATION_TOKEN"
SERVER_ENV = "FEDERATION_SERVER"
DEFAULT_CREDENTIALS = Path("~/.config/federation/token")


class ServiceError(FederationError):
    """The service answered with an error (status and its message kept as fields)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the query service answered {status}: {detail}")
        self.status = status
        self.detail = detail


def resolve_token(token: str | None = None, credentials: Path | None = None) -> str:
    """The token: given, else $FEDERATION_TOKEN, else the credentials file (which must be mode 0600)."""
    if token:
        return token
    path = (credentials or Path(os.environ.get("FEDERATION_CREDENTIALS", str(DEFAULT_CREDENTIALS)))).expanduser()
    return token_from(TOKEN_ENV, path, "credentials file")


def resolve_server(server: str | None = None) -> str:
    value = server or os.environ.get(SERVER_ENV)
    if not value:
        raise FederationError(f"no query service: give --server URL or set {SERVER_ENV}")
    return value.rstrip("/")


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, *, credentials: Path | None = None,
                 timeout: float = 600.0) -> None:
        self.server = resolve_server(server)
        self._http = httpx.Client(base_url=self.server, timeout=httpx.Timeout(timeout, connect=10.0),
                                  headers={"Authorization": f"Bearer {resolve_token(token, credentials)}"})

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FederationError(f"cannot reach the query service at {self.server}: {exc}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServiceError(r.status_code, detail if isinstance(detail, str) else str(detail))
        return r.json()

    def whoami(self) -> dict[str, Any]:
        return self._call("GET", "/v1/whoami")  # type: ignore[no-any-return]

    def query(self, study_id: str | Query, **fields: Any) -> QueryResult:
        """Ask a question: a `Query`, or its fields (statistic, group_by, filters, column, ...)."""
        q = study_id if isinstance(study_id, Query) else Query.model_validate({"study_id": study_id, **fields})
        return QueryResult(Result.from_dict(self._call("POST", "/v1/queries", json=q.model_dump(mode="json"))))

    def site_uploads(self) -> dict[str, Any]:
        """Site coordinators: your site's uploads and their statuses."""
        return self._call("GET", "/v1/site/uploads")  # type: ignore[no-any-return]

    def history(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/queries")  # type: ignore[no-any-return]

    def audit(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/audit")  # type: ignore[no-any-return]

    def audit_verify(self) -> dict[str, Any]:
        return self._call("GET", "/v1/audit/verify")  # type: ignore[no-any-return]

    def close(self) -> None:
        self._http.close()


def _hidden(v: Any) -> bool:
    return isinstance(v, dict) and bool(v.get("suppressed"))


def _num(v: Any) -> Any:
    return None if _hidden(v) else v


class QueryResult:
    """One answer of the service, as tables (pandas) and plots."""

    def __init__(self, result: Result) -> None:
        self.result = result

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def reason(self) -> str:
        return self.result.reason

    @property
    def payload(self) -> dict[str, Any]:
        return self.result.payload

    def table(self) -> Any:
        """Every released value in one tidy DataFrame: a `site` column ("combined" or a site id) and a
        `suppressed` flag; suppressed values are missing (NaN), never zero."""
        import pandas as pd

        p, rows = self.result.payload, []
        stat = p.get("statistic")

        def sites(row: dict[str, Any]) -> list[tuple[str, Any]]:
            return [("combined", row["combined"]), *row.get("per_site", {}).items()]

        if stat == "count":
            for r in [*p["rows"], {"group": ["(total)"] * max(len(p["dims"]), 1), **p["total"]}]:
                for site, v in sites(r):
                    rows.append({**dict(zip(p["dims"] or ["group"], r["group"], strict=False)), "site": site,
                                 "n": _num(v), "suppressed": _hidden(v)})
        elif stat == "crosstab":
            for site, matrix in [("combined", p["combined"]), *p["per_site"].items()]:
                for i, rl in enumerate(p["rows"]):
                    for j, cl in enumerate(p["cols"]):
                        v = matrix[i][j]
                        rows.append({p["rows_dim"]: rl, p["cols_dim"]: cl, "site": site, "n": _num(v),
                                     "suppressed": _hidden(v)})
        elif stat in ("sum", "mean", "variance", "proportion"):
            keys = ["n", "mean", "sd", "variance", "sum"] if stat != "proportion" else ["x", "n", "proportion"]
            for r in p["rows"]:
                for site, v in sites(r):
                    row = {**dict(zip(p["dims"], r["group"], strict=False)), "site": site}
                    row.update({k: (None if _hidden(v) else v.get(k)) for k in keys})
                    if stat == "proportion":
                        ci = [None, None] if _hidden(v) else v["ci95"]
                        row.update({"ci95_low": ci[0], "ci95_high": ci[1]})
                    rows.append({**row, "suppressed": _hidden(v)})
        elif stat == "quantiles":
            for r in p["rows"]:
                c = r["combined"]
                for prob, v in ({} if _hidden(c) else c["quantiles"]).items():
                    rows.append({**dict(zip(p["dims"], r["group"], strict=False)), "site": "combined",
                                 "probability": float(prob), "value": _num(v) and v.get("value"),
                                 "error_bound": _num(v) and v.get("error_bound"), "suppressed": _hidden(v)})
        elif stat in ("km", "cif"):
            # each point's estimates with their intervals: survival, or the cause's and the competing incidence
            values = ["survival"] if stat == "km" else ["incidence", "competing"]
            for c in p["curves"]:
                for site, curve in [("combined", c["combined"]), *c["per_site"].items()]:
                    for pt in curve["points"]:
                        row = {**dict(zip(p["dims"], c["group"], strict=False)), "site": site, "day": pt["day"]}
                        for v, ci in zip(values, ["ci95", "competing_ci95"], strict=False):
                            low = "ci95_low" if v == values[0] else f"{v}_ci95_low"
                            row |= {v: pt[v], low: pt[ci][0], low.replace("low", "high"): pt[ci][1]}
                        rows.append(row | {"at_risk": _num(pt["at_risk"]), "suppressed": _hidden(pt["at_risk"])})
        elif stat in ("logistic", "cox"):
            ratio = "odds_ratio" if stat == "logistic" else "hazard_ratio"
            for c in p["coefficients"]:
                rows.append({"term": c["term"], "site": "combined", "estimate": c["estimate"], "se": c["se"],
                             "z": c["z"], "p": c["p"], ratio: c[ratio], f"{ratio}_ci95_low": c[f"{ratio}_ci95"][0],
                             f"{ratio}_ci95_high": c[f"{ratio}_ci95"][1], "suppressed": False})
        return pd.DataFrame(rows)

    def tests(self) -> Any:
        """A Kaplan-Meier result's log-rank tests (unstratified, stratified by site) as a DataFrame: chi2, df, p
        and the groups compared; a withheld test has its reason and no values."""
        import pandas as pd

        from federation.query.render import group_label

        dims = list(self.result.payload.get("dims") or [])
        rows = [{"test": name, "chi2": t.get("chi2"), "df": t.get("df"), "p": t.get("p"),
                 "groups": [group_label(dims, g) for g in t.get("groups", [])],
                 "left_out": [group_label(dims, g) for g in t.get("left_out", [])],
                 "follow_up_days": t.get("follow_up_days"), "hazard": t.get("hazard", "all events"),
                 "withheld": bool(t.get("withheld")),
                 "reason": t.get("reason", "")}
                for name, t in (self.result.payload.get("tests") or {}).items()]
        return pd.DataFrame(rows)

    def medians(self) -> Any:
        """The median survival of each shown curve (combined and per site) with its 95 % interval, in days;
        missing where not reached."""
        import pandas as pd

        p, rows = self.result.payload, []
        for c in p.get("curves", []):
            for site, curve in [("combined", c["combined"]), *c["per_site"].items()]:
                m = curve.get("median")
                if m is not None:
                    rows.append({**dict(zip(p["dims"], c["group"], strict=False)), "site": site,
                                 "median_days": m["day"], "ci95_low": m["ci95"][0], "ci95_high": m["ci95"][1]})
        return pd.DataFrame(rows)

    @property
    def combined(self) -> Any:
        t = self.table()
        return t[t["site"] == "combined"].drop(columns="site").reset_index(drop=True) if len(t) else t

    @property
    def per_site(self) -> Any:
        t = self.table()
        return t[t["site"] != "combined"].reset_index(drop=True) if len(t) else t

    def plot(self, path: Path | str | None = None) -> Any:
        """Kaplan-Meier curves with the risk table, or bars of counts; saved as PNG when `path` is given."""
        from federation.query.render import figure, plot

        if self.status != "released":
            raise FederationError(f"nothing to plot: the query was refused ({self.reason})")
        return plot(self.result, Path(path)) if path is not None else figure(self.result)

    def _repr_html_(self) -> str:
        title = html.escape(self.result.query.describe())
        if self.status != "released":
            return (f"<p><b>{title}</b></p><p style='color:#b42318'>Refused: {html.escape(self.reason)}</p>"
                    f"<p>{html.escape(self.result.suggestion)}</p>")
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.result.notes)
        return (f"<p><b>{title}</b></p>{self.table().to_html(index=False, na_rep='suppr.', max_rows=60)}"
                f"<p><small>versions: {html.escape(', '.join(self.result.versions.values()))}; audit entry "
                f"#{self.result.audit_id}</small></p><ul>{notes}</ul>")

    def __repr__(self) -> str:
        from federation.query.render import to_text

        return to_text(self.result)
