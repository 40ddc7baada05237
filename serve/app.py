"""The Ray Serve application: a FastAPI ingress around :class:`serve.server.PolicyService`.

Built by :func:`build_app` (``import_path: serve.app:build_app`` in a Serve config, or ``gridrl serve``).
Endpoints (the OpenAPI spec is at ``/openapi.json``, the docs at ``/docs``):

===================  ======  ============================================================================
path                 auth    what
===================  ======  ============================================================================
POST /act            -       one decision: the state (serve/api.py) -> targets, source, checks, model
                             version, mode
GET /healthz         -       the replica's status: model version, mode, rollback, bundles loaded, log
GET /metrics         -       Prometheus text (serve/metrics.py), per site and per replica
GET /status          -       the status page (serve/status.py): per site, the last hour, alerts firing
GET /status/data     -       its data, JSON
GET /admin/status    bearer  control state with its history (and per-site settings), rollback settings
POST /admin/mode     bearer  ``{"mode": ..., "rollout_pct": ..., "site_id": ...}``: the deployment's
                             default, or one site's; clears an automatic rollback
POST /admin/bundle   bearer  ``{"bundle": PATH, "site_id": ...}``: verified, then served (the default,
                             or one site's); refused (404 no bundle there, 409 does not verify or
                             does not fit) otherwise
POST /admin/rollback bearer  switch to the PI now, recording ``reason``
POST /admin/flush    bearer  seal and compact this replica's log (and any dead replica's)
===================  ======  ============================================================================

Errors: 400 unreadable JSON, 401 no bearer token, 403 wrong token or admin disabled, 405 wrong method,
413 body over ``max_body_bytes``, 415 not ``application/json``, 422 invalid content (the detail names the
field and the problem). A malformed request never reaches a controller.
"""

import asyncio
import hmac
import time
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.deployment import Application
from starlette.requests import ClientDisconnect

from serve.api import ActRequest, ActResponse, BundleSwap, ModeChange, StateError, act_request_schema
from serve.config import ServeConfig, admin_token_digest, token_sha256
from serve.metrics import CONTENT_TYPE

app = FastAPI(
    title="gridrl policy server",
    version="2",
    description=(
        "A fleet of sites, each with its bundle behind the safety wrapper; shadow, A/B, rollout or "
        "production per site. Admin endpoints take 'Authorization: Bearer <token>'."
    ),
)

_ERRORS = {
    400: {"description": "unreadable JSON"},
    413: {"description": "body too large"},
    415: {"description": "not application/json"},
    422: {"description": "invalid content; the detail names the field"},
}
_ADMIN_ERRORS = {
    401: {"description": "no bearer token"},
    403: {"description": "wrong token / admin disabled"},
}
_ADMIN = {"security": [{"bearer": []}]}
_TEXT = {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}


def _body_schema(model: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    schema = (
        model
        if isinstance(model, dict)
        else model.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _fail(status: int, detail: Any, errors: list[dict] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors(include_url=False, include_input=False):
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        out.append({"loc": [str(p) for p in e.get("loc", ())], "msg": msg, "type": e.get("type")})
    return out


async def _read_json_body(request: Request, limit: int) -> bytes:
    """The body, or HTTPException 413/415/400 before any parsing."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPException(400, f"Content-Length: not a number ({length[:20]!r})")
        if int(length) > limit:
            raise HTTPException(413, f"body of {int(length)} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "client disconnected before sending the whole body") from None
    body = b"".join(chunks)
    if not body.strip():
        raise HTTPException(400, "empty body: expected a JSON object")
    return body


def _parse(model: type[BaseModel], body: bytes) -> Any:
    """Validate ``body`` as ``model``; HTTPException 400 (not JSON) or 422 (the errors, clearly)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errs = _errors(exc)
        if any(e["type"] == "json_invalid" for e in errs):
            raise HTTPException(400, f"not valid JSON: {errs[0]['msg']}") from None
        if any(e["type"] == "model_type" for e in errs):
            raise HTTPException(422, "expected a JSON object") from None
        text = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in errs)
        raise _Invalid(text, errs) from None


def _act_response(answer: dict[str, Any]) -> Response:
    """``/act``'s answer as JSON, without FastAPI's validation of it against ``ActResponse`` (the
    service builds it with the right types; the route still declares the model for the OpenAPI
    document): the same bytes for a fraction of the CPU."""
    body = ActResponse.model_construct(**answer).model_dump_json()
    return Response(body, media_type="application/json")


class _Invalid(Exception):
    def __init__(self, text: str, errors: list[dict[str, Any]]):
        super().__init__(text)
        self.text, self.errors = text, errors


@app.exception_handler(_Invalid)
async def _invalid_handler(request: Request, exc: _Invalid) -> JSONResponse:
    return _fail(422, exc.text, exc.errors)


@serve.deployment
@serve.ingress(app)
class PolicyServer:
    """One replica of the policy server (the logic is :class:`serve.server.PolicyService`)."""

    def __init__(self, config: dict[str, Any]):
        from serve.server import PolicyService

        self.config = ServeConfig.from_args(config, source="PolicyServer config")
        replica = serve.get_replica_context().replica_id.unique_id
        self.service = PolicyService(self.config, replica)

    def __del__(self) -> None:  # Serve's graceful shutdown: compact what this replica logged
        service = getattr(self, "service", None)
        if service is not None:
            service.close()

    def check_health(self) -> None:
        if not self.service.log.alive:
            raise RuntimeError("decision-log thread died")

    def _admin(self, request: Request) -> str:
        digest = self.service.token_sha256
        if digest is None:
            raise HTTPException(403, "admin disabled: no token configured (GRIDRL_SERVE_TOKEN or _FILE)")
        header = request.headers.get("authorization")
        if not header:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(
                401, "expected 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(token_sha256(token.strip()), digest):
            raise HTTPException(403, "invalid token")
        client = request.client.host if request.client else "?"
        return f"admin@{client}"

    @app.post(
        "/act",
        response_model=ActResponse,
        responses=_ERRORS,
        openapi_extra=_body_schema(act_request_schema()),
    )
    async def act(self, request: Request) -> Any:
        t0 = time.perf_counter()
        status, site = "2xx", None
        try:
            req = _parse(ActRequest, await _read_json_body(request, self.config.max_body_bytes))
            site = req.site_id
            need = self.service.pending(site)
            if need is not None:  # the site's bundle is not loaded here: load it off the request loop
                await asyncio.to_thread(self.service.load, *need)
            try:
                return _act_response(self.service.act(req))
            except StateError as exc:
                field = str(exc).split(":", 1)[0] if str(exc).startswith("spec_version:") else "state"
                raise _Invalid(str(exc), [{"loc": [field], "msg": str(exc), "type": "value_error"}]) from None
            except OSError as exc:  # the log cannot take it: no answer may go out unlogged
                raise HTTPException(503, f"decision log unavailable: {exc}") from None
        except HTTPException as exc:
            status = str(exc.status_code)
            raise
        except _Invalid:
            status = "422"
            raise
        finally:
            m = self.service.metrics
            m.latency_of(site, status == "2xx").observe(time.perf_counter() - t0)
            if status != "2xx":
                m.rejected.labels(m.replica, status).inc()

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return self.service.health()

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"description": "Prometheus text exposition format 0.0.4", **_TEXT}},
    )
    async def metrics(self) -> Response:
        self.service.sync()
        return Response(self.service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get(
        "/status",
        response_class=HTMLResponse,
        responses={
            200: {"description": "the status page", "content": {"text/html": {"schema": {"type": "string"}}}}
        },
    )
    async def status_page(self) -> HTMLResponse:
        from serve.status import PAGE

        return HTMLResponse(PAGE)

    @app.get("/status/data")
    async def status_data(self) -> dict[str, Any]:
        self.service.sync()
        return await asyncio.to_thread(self.service.status_data)

    @app.get("/admin/status", responses=_ADMIN_ERRORS, openapi_extra=_ADMIN)
    async def admin_status(self, request: Request) -> dict[str, Any]:
        self._admin(request)
        return self.service.status()

    @app.post(
        "/admin/mode",
        responses={**_ERRORS, **_ADMIN_ERRORS},
        openapi_extra={**_body_schema(ModeChange), **_ADMIN},
    )
    async def admin_mode(self, request: Request) -> Any:
        by = self._admin(request)
        change = _parse(ModeChange, await _read_json_body(request, self.config.max_body_bytes))
        from serve.server import AdminError

        try:
            state = self.service.set_mode(change.mode, change.rollout_pct, change.reason, by, change.site_id)
        except AdminError as exc:
            return _fail(exc.status, str(exc))
        out = {k: state[k] for k in ("mode", "rollout_pct", "rolled_back", "version")}
        if change.site_id is not None:
            out["site"] = {"site_id": change.site_id, **state["sites"][change.site_id]}
        return out

    @app.post(
        "/admin/bundle",
        responses={
            **_ERRORS,
            **_ADMIN_ERRORS,
            404: {"description": "no bundle at that path"},
            409: {"description": "bundle refused: it does not verify, or does not fit the sites"},
        },
        openapi_extra={**_body_schema(BundleSwap), **_ADMIN},
    )
    async def admin_bundle(self, request: Request) -> Any:
        by = self._admin(request)
        swap = _parse(BundleSwap, await _read_json_body(request, self.config.max_body_bytes))
        from serve.server import AdminError

        try:  # verified in a worker thread: requests go on meanwhile
            rt = await asyncio.to_thread(self.service.verify_bundle, swap.bundle, swap.site_id)
        except AdminError as exc:
            return _fail(exc.status, str(exc))
        self.service.commit_bundle(rt, swap.reason, by, swap.site_id)
        return {"model_version": rt.model_version, "bundle": swap.bundle, "site_id": swap.site_id}

    @app.post("/admin/rollback", responses=_ADMIN_ERRORS, openapi_extra=_ADMIN)
    async def admin_rollback(self, request: Request) -> Any:
        by = self._admin(request)
        state = self.service.roll_back("manual", {}, by)
        return {"rolled_back": state.get("rolled_back")}

    @app.post("/admin/flush", responses=_ADMIN_ERRORS, openapi_extra=_ADMIN)
    async def admin_flush(self, request: Request) -> Any:
        self._admin(request)
        rows = await asyncio.to_thread(self.service.flush)  # Parquet writes off the request loop
        return {"compacted_rows": rows, "replica": self.service.replica}


def _openapi() -> dict[str, Any]:
    """FastAPI's document plus the bearer scheme the admin endpoints declare."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the admin token (GRIDRL_SERVE_TOKEN / _FILE)",
        }
        app.openapi_schema = spec
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application for ``args`` (a Serve config's ``args``: serve/config.py ServeConfig keys).

    The bundle is verified here, so a deploy with a bad bundle fails at once with the reason. The log
    folder and the admin token's sha256 are resolved here, so every replica uses the same ones.
    """
    from serve.domains import load_runtime

    cfg = ServeConfig.from_args(args)
    load_runtime(cfg.bundle)  # any domain's bundle (serve/domains.py)
    cfg = replace(cfg, log_dir=str(cfg.resolved_log_dir()), admin_token_sha256=admin_token_digest(cfg))
    return PolicyServer.options(
        num_replicas=cfg.num_replicas,
        ray_actor_options={"num_cpus": cfg.replica_cpus},
        max_ongoing_requests=cfg.max_ongoing_requests,
        graceful_shutdown_timeout_s=30.0,
        health_check_period_s=5.0,
        logging_config={
            "enable_access_log": cfg.access_log,
            "log_level": "INFO" if cfg.access_log else "WARNING",
        },
    ).bind(cfg.to_dict())
