"""The viewer's web app: server-rendered pages over ``hare.viewer.data``, one store per app.

FastAPI (already a dependency of hare, and of vLLM's server) with Jinja2 templates: every page
is plain HTML rendered on the server, so it works without JavaScript, reads well in a headless
browser and in tests, and a page is one request's worth of store reads. Handlers are plain
``def`` functions (FastAPI runs them in its thread pool), since the store calls block.

Bad input never shows a stack trace: a :class:`ViewError` (unknown run, partition or record, a
missing or corrupt object) becomes a page with its message and status; a :class:`StoreError`
(the store cannot be reached after a short retry budget) a 503 page naming the store; anything
else a 500 page with the exception's one-line message. Each is logged on ``hare.viewer``; only
the unexpected one carries its traceback, and only in the log.

The viewer has no login, so it answers only requests addressed to where it listens: a Host
header other than the bound ``host:port`` (and, on loopback, ``localhost``/``127.0.0.1``/``[::1]``
at that port) gets 421, which defeats DNS rebinding (a web page whose own name now resolves to
127.0.0.1 reading the viewer from the user's browser). Every response carries a
Content-Security-Policy with no script at all (the pages have none) and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from hare.store import ObjectStore, RetryPolicy, StoreError, open_store
from hare.viewer import data
from hare.viewer.data import FILTERS, ViewError

log = logging.getLogger("hare.viewer")

HERE = Path(__file__).resolve().parent
RECORDS_PER_PAGE = 50
PARTITIONS_PER_PAGE = 200
LIVE_REFRESH_S = 5
# A page answers within seconds even when the store is down: a short retry budget of its own
# (HARE_VIEW_RETRY_SECONDS), not the pipeline's two minutes.
RETRY_ENV = "HARE_VIEW_RETRY_SECONDS"
# Sent on every response: the pages are plain HTML and one stylesheet, no script, no frame.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def viewer_retry() -> RetryPolicy:
    raw = os.environ.get(RETRY_ENV, "").strip()
    try:
        seconds = float(raw) if raw else 3.0
    except ValueError:
        raise StoreError(f"{RETRY_ENV}={raw!r} is not a number of seconds") from None
    return RetryPolicy(max_elapsed_s=seconds, max_delay_s=1.0)


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def url_host(host: str) -> str:
    """A host as a URL writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _split_host(header: str) -> tuple[str, int] | None:
    """``name:port``, ``[v6]:port`` or a bare name (port 80) -> (lower-case name, port); None if malformed."""
    name, port = header.strip().lower(), "80"
    if name.startswith("["):
        name, _, rest = name[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif name.count(":") == 1:
        name, port = name.split(":")
    return (name, int(port)) if port.isdigit() and name else None


@dataclass(frozen=True)
class HostCheck:
    """Which Host headers address this viewer: DNS rebinding makes a browser send the viewer a
    request whose Host is the attacker's own name, so anything but our address is refused."""

    port: int
    names: frozenset[str]
    any_ip: bool = False  # a wildcard bind: any address literal (rebinding needs a name, never an address)

    @classmethod
    def for_bind(cls, host: str, port: int) -> "HostCheck":
        """The bound ``host:port``; on loopback also localhost, 127.0.0.1 and [::1]; on a wildcard
        bind (0.0.0.0, ::) the loopback names, this machine's name and any address literal."""
        host = host.strip("[]").lower()
        if host in WILDCARD_HOSTS:
            return cls(port, LOOPBACK_NAMES | {socket.gethostname().lower(), socket.getfqdn().lower()}, any_ip=True)
        ip = _ip(host)
        loopback = host == "localhost" or (ip is not None and ip.is_loopback)
        return cls(port, LOOPBACK_NAMES | {host} if loopback else frozenset({host}))

    def allows(self, header: str | None) -> bool:
        """Whether a request's Host header names this viewer's address and port."""
        parsed = _split_host(header or "")
        if parsed is None or parsed[1] != self.port:
            return False
        return parsed[0] in self.names or (self.any_ip and _ip(parsed[0]) is not None)


def _int_param(request: Request, name: str, default: int, minimum: int = 1) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ViewError(f"query parameter {name}={raw!r} is not a whole number", status=400) from None
    if value < minimum:
        raise ViewError(f"query parameter {name}={raw!r} must be at least {minimum}", status=400)
    return value


def _excerpt(text: Any, n: int = 160) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _seed(row: dict[str, Any]) -> Any:
    try:
        return json.loads(row.get("sampling") or "{}").get("seed")
    except (ValueError, AttributeError):
        return None


def create_app(store_url: str, store: ObjectStore | None = None,
               bound: tuple[str, int] = ("127.0.0.1", 8765)) -> FastAPI:
    """The app over one store (``store`` given: that object, e.g. in tests), answering only
    requests whose Host is ``bound`` (the address and port it listens on)."""
    app = FastAPI(title="hare view", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["excerpt"] = _excerpt
    templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
    templates.env.globals["urlencode"] = urlencode
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    cache = data.PartitionCache()
    state: dict[str, ObjectStore] = {}
    hosts = HostCheck.for_bind(*bound)

    def get_store() -> ObjectStore:
        if "store" not in state:
            state["store"] = store if store is not None else open_store(store_url, retry=viewer_retry())
        return state["store"]

    def page(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"store_url": store_url, **ctx}, status_code=status)

    def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return page(request, "error.html", status=status, title=title, message=message)

    @app.exception_handler(ViewError)
    def _view_error(request: Request, exc: ViewError) -> HTMLResponse:
        log.warning("viewer: %s %s -> %d: %s", request.method, request.url.path, exc.status, exc)
        titles = {400: "Bad request", 404: "Not found", 409: "Not committed yet", 500: "Unreadable object"}
        return error_page(request, exc.status, titles.get(exc.status, "Error"), str(exc))

    @app.exception_handler(StoreError)
    def _store_error(request: Request, exc: StoreError) -> HTMLResponse:
        log.error("viewer: %s %s -> 503: store %s: %s", request.method, request.url.path, store_url, exc)
        return error_page(request, 503, "Store unreachable", f"cannot read the store {store_url}: {exc}")

    @app.exception_handler(StarletteHTTPException)
    def _http_error(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        log.warning("viewer: %s %s -> %d", request.method, request.url.path, exc.status_code)
        return error_page(request, exc.status_code, "Not found" if exc.status_code == 404 else "Error",
                          f"no page at {request.url.path}" if exc.status_code == 404 else str(exc.detail))

    @app.middleware("http")
    async def _unexpected(request: Request, call_next: Any) -> Response:
        # Here rather than an exception handler for Exception: Starlette re-raises after those,
        # so the server would log the traceback twice; this answers the page and logs it once.
        try:
            return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - the last guard between a bug and the browser
            log.error("viewer: %s %s -> 500", request.method, request.url.path, exc_info=exc)
            return error_page(request, 500, "Internal error",
                              f"{type(exc).__name__}: {exc} (the traceback is in the log)")

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        # Registered after _unexpected, so it wraps it: the headers go on error pages too.
        host = request.headers.get("host")
        if hosts.allows(host):
            response = await call_next(request)
        else:
            where = f"{url_host(bound[0])}:{bound[1]}"
            log.warning("viewer: %s %s -> 421: Host %r is not %s", request.method, request.url.path, host, where)
            response = PlainTextResponse(f"421 Misdirected Request: this viewer answers only to its own "
                                         f"address ({where}), not Host {host!r}\n", status_code=421)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    def runs(request: Request) -> HTMLResponse:
        n = _int_param(request, "page", 1)
        rows, total = data.list_runs(get_store(), n)
        return page(request, "runs.html", runs=rows, total=total, page_no=n, per_page=data.RUNS_PER_PAGE)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, run_id: str) -> HTMLResponse:
        st = get_store()
        info = data.read_run_info(st, run_id)
        parts = data.partition_states(st, run_id, info)
        running = info.get("status") == "running"
        n = _int_param(request, "page", 1)
        shown = parts[(n - 1) * PARTITIONS_PER_PAGE: n * PARTITIONS_PER_PAGE]
        return page(request, "run.html", run_id=run_id, info=info, parts=parts, shown=shown, page_no=n,
                    per_page=PARTITIONS_PER_PAGE, stages=data.run_stages(info),
                    figures=data.card_figures(st, run_id), live=running and request.query_params.get("live") != "0",
                    refresh_s=LIVE_REFRESH_S)

    @app.get("/runs/{run_id}/records", response_class=HTMLResponse)
    def records(request: Request, run_id: str) -> HTMLResponse:
        st = get_store()
        info = data.read_run_info(st, run_id)
        pids = list(info.get("partitions") or [])
        if not pids:
            raise ViewError(f"run {run_id!r} plans no partitions (run.json lists none)")
        pid = request.query_params.get("partition") or pids[0]
        part = data.partition_state(st, run_id, info, pid)
        recs = cache.get(st, run_id, part)
        filters = {k: request.query_params.get(k, "") for k in FILTERS}
        hits = data.apply_filters(recs.table, filters)
        n = _int_param(request, "page", 1)
        rows = hits.slice((n - 1) * RECORDS_PER_PAGE, RECORDS_PER_PAGE).to_pylist()
        for r in rows:
            r["domain"] = data.domain_of(r.get("topic_path"))
        i = pids.index(pid)
        active = {k: v for k, v in filters.items() if v}
        return page(request, "records.html", run_id=run_id, info=info, pid=pid, part=part, recs=recs, rows=rows,
                    matched=hits.num_rows, total=recs.table.num_rows, page_no=n, per_page=RECORDS_PER_PAGE,
                    facets=data.facet_values(recs.table), filters=filters, active=active,
                    prev_pid=pids[i - 1] if i > 0 else None, next_pid=pids[i + 1] if i + 1 < len(pids) else None,
                    partitions=len(pids), position=i + 1)

    @app.get("/runs/{run_id}/records/{pid}/{prompt_index}", response_class=HTMLResponse)
    def record(request: Request, run_id: str, pid: str, prompt_index: str) -> HTMLResponse:
        try:
            index = int(prompt_index)
        except ValueError:
            raise ViewError(f"record address {prompt_index!r} is not a prompt_index (a whole number)",
                            status=400) from None
        st = get_store()
        info = data.read_run_info(st, run_id)
        part = data.partition_state(st, run_id, info, pid)
        recs = cache.get(st, run_id, part)
        row = data.find_row(recs, index)
        scores = {k.removeprefix("q_"): v for k, v in row.items() if k.startswith("q_") and v is not None}
        duplicate = None
        if row.get("duplicate_of"):
            dup_run = row.get("duplicate_of_run") or run_id
            duplicate = {"id": row["duplicate_of"], "run": dup_run, "score": row.get("duplicate_score"),
                         "href": f"/runs/{dup_run}/find/{row['duplicate_of']}?" + urlencode({"near": pid})}
            if dup_run == run_id:  # the partition in memory may hold it: show it inline, no extra read
                kept = data.kept_row(recs, row["duplicate_of"])
                if kept is not None:
                    duplicate["row"] = kept
                    duplicate["href"] = f"/runs/{run_id}/records/{pid}/{kept['prompt_index']}"
        return page(request, "record.html", run_id=run_id, info=info, pid=pid, row=row, scores=scores,
                    seed=_seed(row), duplicate=duplicate, quality_cfg=(info.get("config") or {}).get("quality"))

    @app.get("/runs/{run_id}/find/{record_id}")
    def find(request: Request, run_id: str, record_id: str) -> Response:
        near = request.query_params.get("near")
        pid, index = data.locate_record(get_store(), run_id, record_id, near)
        return RedirectResponse(f"/runs/{run_id}/records/{pid}/{index}", status_code=303)

    @app.get("/runs/{run_id}/lineage", response_class=HTMLResponse)
    def lineage(request: Request, run_id: str) -> HTMLResponse:
        st = get_store()
        info = data.read_run_info(st, run_id)
        n = _int_param(request, "page", 1)
        events, total = data.lineage_events(st, run_id, n)
        return page(request, "lineage.html", run_id=run_id, info=info, events=events, total=total, page_no=n,
                    per_page=100)

    return app
