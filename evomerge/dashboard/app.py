"""The dashboard's HTTP side: routes and the safety rules.

Safe by default (issue 18):
- GET and HEAD only; anything else is 405 before a route runs. The archive is opened read-only
  (:class:`~evomerge.dashboard.archive.ReadOnlyArchive`), so even a route bug cannot write.
- Bound to loopback unless told otherwise; a non-loopback bind needs a token (``--token`` or
  ``EVOMERGE_DASHBOARD_TOKEN``), given once as ``?token=`` (it becomes an HttpOnly, SameSite=Strict
  cookie) or as ``Authorization: Bearer``.
- The Host header must name this server (loopback names, the bind address, ``--allow-host``
  names): a page on another site that resolves its own name to 127.0.0.1 (DNS rebinding) is
  refused.
- No CORS headers; a strict Content-Security-Policy (scripts and data from this server only, no
  inline script, no eval), ``nosniff``, no framing, no referrer.
- Pages are static shells; the page script fills them with ``textContent`` only, so a stored
  string (a run name, an error text, a model path) is never read as markup.
- No CDN: plotly.js comes from the installed plotly wheel.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import html
import ipaddress
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from evomerge.dashboard.archive import POINTS_CHUNK, ReadOnlyArchive
from evomerge.dashboard.recipe_view import recipe_picture
from evomerge.store.errors import ArchiveError
from evomerge.strict_json import strict_json

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})
TOKEN_COOKIE = "evomerge_dashboard_token"
# the static files' URLs carry their content's hash, so browsers may keep them (and plotly.js's compiled code)
STATIC_CACHE = "public, max-age=86400, immutable"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether a bind address or Host name is this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header without its port (``[::1]:8080`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _static_file(name: str) -> tuple[Path, str] | None:
    """The files the pages load: ours from ``static/`` and plotly.js from the plotly package."""
    if name == "plotly.min.js":
        try:
            import plotly
        except ImportError:
            return None
        return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js", "text/javascript"
    own = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
    return (STATIC / name, own[name]) if name in own else None


@functools.cache
def _asset_version(name: str) -> str:
    """A static file's content hash (its URL's ``?v=``): a changed file is a new URL."""
    found = _static_file(name)
    if found is None or not found[0].is_file():
        return "0"
    return hashlib.sha256(found[0].read_bytes()).hexdigest()[:12]


def _page(kind: str, title: str, data: dict[str, str]) -> str:
    """A page shell: the page script reads its run and candidate from ``data-*`` attributes."""
    attrs = " ".join(f'data-{k}="{html.escape(v, quote=True)}"' for k, v in data.items())
    css, js, plotly = (f"/static/{n}?v={_asset_version(n)}" for n in ("dashboard.css", "dashboard.js", "plotly.min.js"))
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(title)}</title><link rel="stylesheet" href="{css}">'
            f'<script src="{js}" defer></script></head>'
            f'<body data-page="{kind}" data-plotly="{plotly}" {attrs}><header><a href="/" class="home">evomerge</a>'
            '<span id="crumbs"></span></header><main id="main"><p class="muted">loading…</p></main></body></html>')


def create_app(archive: ReadOnlyArchive, *, token: str | None = None, allowed_hosts: set[str] | None = None) -> Any:
    """The ASGI app over ``archive``. ``allowed_hosts``: the names a Host header may carry
    (default: loopback names only); ``token``: required on every request when given."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
    )
    from starlette.routing import Route

    hosts = {h.lower() for h in (allowed_hosts or set())} | set(LOOPBACK_NAMES)

    def api(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            from starlette.concurrency import run_in_threadpool

            try:
                body = await run_in_threadpool(fn, request)
            except KeyError as err:
                return JSONResponse({"error": f"not found: {err.args[0]}"}, status_code=404)
            except ValueError as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            except ArchiveError as err:
                return JSONResponse({"error": str(err)}, status_code=503)
            try:
                text = json.dumps(body, allow_nan=False, separators=(",", ":"))
            except ValueError:  # a NaN or infinity somewhere: the slow pass turns them into null
                text = json.dumps(strict_json(body), allow_nan=False, separators=(",", ":"))
            return Response(text, media_type="application/json")
        return endpoint

    def qint(request: Request, name: str, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        if not raw.lstrip("-").isdigit() or len(raw) > 11:
            raise ValueError(f"{name} must be an integer")
        return int(raw)

    def qfloat(request: Request, name: str) -> float | None:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return None
        try:
            v = float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number") from None
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite")
        return v

    def runs(_request: Request) -> Any:
        return {"runs": archive.runs(), "archive": archive.shown}

    def run(request: Request) -> Any:
        return archive.run(request.path_params["run"])

    def points(request: Request) -> Any:
        sample = request.query_params.get("sample")
        return archive.points(request.path_params["run"], qint(request, "after", 0),
                              qint(request, "limit", POINTS_CHUNK), None if sample is None else qint(request, "sample", 0))

    def candidates(request: Request) -> Any:
        q = request.query_params
        return archive.candidates(request.path_params["run"], sort=q.get("sort", "index"),
                                  desc=q.get("desc", "0") in ("1", "true"), status=q.get("status") or None,
                                  fidelity=q.get("fidelity") or None, objective=q.get("objective") or None,
                                  low=qfloat(request, "low"), high=qfloat(request, "high"),
                                  offset=qint(request, "offset", 0), limit=qint(request, "limit", 50))

    def candidate(request: Request) -> Any:
        return archive.candidate(request.path_params["run"], int(request.path_params["index"]))

    def picture(request: Request) -> Any:
        space, top = archive.top(request.path_params["run"], qint(request, "k", 10))
        out = recipe_picture(space, [t["recipe"] for t in top])
        out["candidates"] = [{"index": t["index"], "fitness": t["fitness"]} for t in top]
        return out

    def lineage(request: Request) -> Any:
        return archive.lineage(request.path_params["run"], qint(request, "k", 20))

    def items(request: Request) -> Any:
        return archive.items(request.path_params["run"], qint(request, "a", 0), qint(request, "b", 0))

    def page(kind: str) -> Any:
        async def endpoint(request: Request) -> Response:
            data = {k: str(v) for k, v in request.path_params.items()}
            title = " · ".join(["evomerge", *data.values()])
            return HTMLResponse(_page(kind, title, data))
        return endpoint

    async def static(request: Request) -> Response:
        found = _static_file(request.path_params["name"])
        if found is None or not found[0].is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(found[0], media_type=found[1], headers={"cache-control": STATIC_CACHE})

    routes = [
        Route("/", page("runs")),
        Route("/runs/{run}", page("run")),
        Route("/runs/{run}/candidates/{index:int}", page("candidate")),
        Route("/static/{name}", static),
        Route("/favicon.ico", lambda _request: Response(status_code=204)),
        Route("/api/runs", api(runs)),
        Route("/api/runs/{run}", api(run)),
        Route("/api/runs/{run}/points", api(points)),
        Route("/api/runs/{run}/candidates", api(candidates)),
        Route("/api/runs/{run}/candidates/{index:int}", api(candidate)),
        Route("/api/runs/{run}/picture", api(picture)),
        Route("/api/runs/{run}/lineage", api(lineage)),
        Route("/api/runs/{run}/items", api(items)),
    ]
    app = Starlette(routes=routes)

    async def guard(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request = Request(scope)
        response: Response | None = None
        if request.method not in ("GET", "HEAD"):
            response = PlainTextResponse("the dashboard is read-only: GET only", status_code=405,
                                         headers={"allow": "GET, HEAD"})
        elif host_name(request.headers.get("host", "")) not in hosts:
            response = PlainTextResponse("unexpected Host header (start the dashboard with --allow-host NAME "
                                         "to serve that name)", status_code=400)
        elif token is not None:
            given = request.cookies.get(TOKEN_COOKIE) or ""
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:]
            in_query = request.query_params.get("token")
            if in_query is not None and hmac.compare_digest(in_query.encode(), token.encode()):
                rest = urlencode([(k, v) for k, v in parse_qsl(request.url.query) if k != "token"])
                response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            elif not hmac.compare_digest(given.encode(), token.encode()):
                response = PlainTextResponse("a token is required: open the URL the dashboard printed "
                                             "(…?token=…)", status_code=401)
        if response is not None:
            for k, v in SECURITY_HEADERS.items():
                response.headers[k] = v
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                given = {k.decode().lower() for k, _v in message.get("headers", [])}
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k not in given]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_headers)

    return guard


def serve(db: str, *, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
          allow_hosts: list[str] | None = None, log: Any = print) -> None:
    """Serve the dashboard until interrupted (uvicorn, one process)."""
    import socket

    import uvicorn

    from evomerge.errors import ConfigError

    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} serves the archive beyond this machine without a token",
                          hint="pass --token SECRET (or set EVOMERGE_DASHBOARD_TOKEN), or keep --host 127.0.0.1")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port", hint="use 1-65535, e.g. --port 8080")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # a taken port is an error line, not a traceback
        try:
            probe.bind((host, port))
        except OSError as err:
            import errno

            hint = ("pick another --port, or stop what listens there" if err.errno == errno.EADDRINUSE else
                    "give --host an address of this machine (127.0.0.1; 0.0.0.0 for every interface, with --token)")
            raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror})", hint=hint) from None
    archive = ReadOnlyArchive(db)
    allowed = set(allow_hosts or ())
    if host not in ("0.0.0.0", "::"):
        allowed.add(host)
    else:
        allowed |= {socket.gethostname(), socket.getfqdn()}
    app = create_app(archive, token=token, allowed_hosts=allowed)
    shown = f"[{host}]" if ":" in host else host
    log(f"evomerge dashboard over {archive.shown}: http://{shown}:{port}/" + (f"?token={token}" if token else ""))
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
    finally:
        archive.close()
