"""The Ray Serve application: a FastAPI ingress around :class:`serve.server.PolicyService`.

Built by :func:`build_app` (``import_path: serve.app:build_app`` in a Serve config, or ``gridrl serve``).
Endpoints (the OpenAPI spec is at ``/openapi.json``, the docs at ``/docs``):

===================  ======  ============================================================================
path                 auth    what
===================  ======  ============================================================================
POST /act            -       one decision: the state (serve/api.py) -> targets, source, checks, model
                             version, mode
GET /healthz         -       the replica's status: model version, mode, rollback, log
GET /metrics         -       Prometheus text (serve/metrics.py)
GET /admin/status    bearer  control state with its history, rollback settings and baseline
POST /admin/mode     bearer  ``{"mode": ..., "rollout_pct": ...}``; clears an automatic rollback
POST /admin/bundle   bearer  ``{"bundle": PATH}``: verified, then served; refused (422) otherwise
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
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.deployment import Application
from starlette.requests import ClientDisconnect

from serve.api import ActRequest, ActResponse, BundleSwap, ModeChange
from serve.config import ServeConfig, admin_token_digest, token_sha256
from serve.metrics import CONTENT_TYPE

app = FastAPI(
    title="gridrl policy server",
    version="1",
    description="Export control: a bundle behind the safety wrapper; shadow, A/B, rollout or production.",
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


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    }


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

    @app.post("/act", response_model=ActResponse, responses=_ERRORS, openapi_extra=_body_schema(ActRequest))
    async def act(self, request: Request) -> Any:
        t0 = time.perf_counter()
        status = "2xx"
        try:
            req = _parse(ActRequest, await _read_json_body(request, self.config.max_body_bytes))
            try:
                x = req.vector()
            except ValueError as exc:  # the spec version
                raise _Invalid(
                    str(exc), [{"loc": ["spec_version"], "msg": str(exc), "type": "value_error"}]
                ) from None
            try:
                return self.service.act(req, x)
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
            cls = "2xx" if status == "2xx" else "4xx"
            m.latency.labels(m.replica, cls).observe(time.perf_counter() - t0)
            if status != "2xx":
                m.rejected.labels(m.replica, status).inc()

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return self.service.health()

    @app.get("/metrics")
    async def metrics(self) -> Response:
        self.service.sync()
        return Response(self.service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/admin/status", responses=_ADMIN_ERRORS)
    async def admin_status(self, request: Request) -> dict[str, Any]:
        self._admin(request)
        return self.service.status()

    @app.post("/admin/mode", responses={**_ERRORS, **_ADMIN_ERRORS}, openapi_extra=_body_schema(ModeChange))
    async def admin_mode(self, request: Request) -> Any:
        by = self._admin(request)
        change = _parse(ModeChange, await _read_json_body(request, self.config.max_body_bytes))
        from serve.server import AdminError

        try:
            state = self.service.set_mode(change.mode, change.rollout_pct, change.reason, by)
        except AdminError as exc:
            return _fail(422, str(exc))
        return {k: state[k] for k in ("mode", "rollout_pct", "rolled_back", "version")}

    @app.post("/admin/bundle", responses={**_ERRORS, **_ADMIN_ERRORS}, openapi_extra=_body_schema(BundleSwap))
    async def admin_bundle(self, request: Request) -> Any:
        by = self._admin(request)
        swap = _parse(BundleSwap, await _read_json_body(request, self.config.max_body_bytes))
        from serve.server import AdminError

        try:
            self.service.swap_bundle(swap.bundle, swap.reason, by)
        except AdminError as exc:
            return _fail(422, str(exc))
        return {"model_version": self.service.model_version, "bundle": swap.bundle}

    @app.post("/admin/rollback", responses=_ADMIN_ERRORS)
    async def admin_rollback(self, request: Request) -> Any:
        by = self._admin(request)
        state = self.service.roll_back("manual", {}, by)
        return {"rolled_back": state.get("rolled_back")}

    @app.post("/admin/flush", responses=_ADMIN_ERRORS)
    async def admin_flush(self, request: Request) -> Any:
        self._admin(request)
        rows = await asyncio.to_thread(self.service.flush)  # Parquet writes off the request loop
        return {"compacted_rows": rows, "replica": self.service.replica}


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application for ``args`` (a Serve config's ``args``: serve/config.py ServeConfig keys).

    The bundle is verified here, so a deploy with a bad bundle fails at once with the reason. The log
    folder and the admin token's sha256 are resolved here, so every replica uses the same ones.
    """
    from serve.bundle import load_bundle

    cfg = ServeConfig.from_args(args)
    load_bundle(cfg.bundle)
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
