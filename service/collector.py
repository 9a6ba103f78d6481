"""The log collector: ``POST /v1/interactions`` with a per-tenant ``X-API-Key``.

Each record is validated against the interaction contract (``ml.schema.validate_record``); its
``tenant_id`` is set to the key's tenant when absent and must equal it when present. Accepted
records are written to the landing zone (one file per request per UTC day of the records'
timestamps, atomically and fsynced by ``ml.landing.write_landing_file``) *before* the answer, so
every record the answer calls accepted survives a crash right after it.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from ml.landing import write_landing_file
from ml.schema import RecordError, validate_record
from service import schemas as S
from service.deps import collector_key_scheme, get_ctx
from store import collector_keys
from store.db import session_scope

router = APIRouter(tags=["collector"])

_BODY_SCHEMA = {
    "oneOf": [
        {"type": "object", "description": "one interaction record",
         "required": ["interaction_id", "session_id", "timestamp"]},
        {"type": "array", "items": {"type": "object"}, "description": "a list of records"},
        {"type": "object", "required": ["records"], "additionalProperties": False,
         "properties": {"records": {"type": "array", "items": {"type": "object"}}}},
    ],
}


class BodyError(ValueError):
    """The request body is not one record, a list of records or {"records": [...]}."""


def records_of(payload: Any) -> list[Any]:
    """The records of a decoded body: one record, a list, or ``{"records": [...]}``."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        if set(payload) == {"records"}:
            if not isinstance(payload["records"], list):
                raise BodyError("`records` must be a JSON array of interaction records")
            return payload["records"]
        return [payload]
    raise BodyError(f"body is a JSON {type(payload).__name__}; send a record object, "
                    "an array of records, or {\"records\": [...]}")


def check_records(records: list[Any], tenant_id: str) -> tuple[list[dict], dict[str, list[dict]]]:
    """Validate each record for ``tenant_id``; returns per-record results and accepted by UTC day."""
    results: list[dict] = []
    by_day: dict[str, list[dict]] = defaultdict(list)
    seen: set[str] = set()
    for index, obj in enumerate(records):
        iid = obj.get("interaction_id") if isinstance(obj, dict) else None
        iid = iid if isinstance(iid, str) else None
        reason: str | None = None
        if isinstance(obj, dict) and "tenant_id" in obj and obj["tenant_id"] != tenant_id:
            reason = (f"tenant_id {str(obj['tenant_id'])[:128]!r} does not match the API key's "
                      f"tenant {tenant_id!r}")
        else:
            try:
                rec = validate_record({**obj, "tenant_id": tenant_id} if isinstance(obj, dict)
                                      else obj)
            except RecordError as exc:
                reason = exc.reason
            else:
                if rec.interaction_id in seen:
                    reason = f"duplicate interaction_id {rec.interaction_id!r} in this request"
                else:
                    seen.add(rec.interaction_id)
                    by_day[rec.timestamp.date().isoformat()].append({**obj, "tenant_id": tenant_id})
        results.append({"index": index, "interaction_id": iid, "accepted": reason is None,
                        "reason": reason})
    return results, dict(by_day)


def _source_name(tenant_id: str) -> str:
    return ("collector-" + re.sub(r"[^A-Za-z0-9_.-]", "_", tenant_id))[:40]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {int(declared):,} bytes exceeds the limit of "
                                 f"{limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/v1/interactions", response_model=S.CollectorOut,
    summary="Send interaction records (one, a list, or {\"records\": [...]})",
    responses={400: {"model": S.ErrorOut, "description": "body is not JSON / not records"},
               401: {"model": S.ErrorOut, "description": "missing or unknown X-API-Key"},
               413: {"model": S.ErrorOut, "description": "too many records or bytes"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _BODY_SCHEMA}}}},
)
async def post_interactions(request: Request,
                            api_key: str | None = Depends(collector_key_scheme)) -> S.CollectorOut:
    ctx = get_ctx(request)

    def lookup() -> str | None:
        with session_scope(ctx.url) as s:
            return collector_keys.tenant_for_key(s, api_key)

    tenant_id = await run_in_threadpool(lookup)
    if tenant_id is None:
        raise HTTPException(401, "missing, unknown or revoked X-API-Key",
                            headers={"WWW-Authenticate": "X-API-Key"})
    raw = await _read_body(request, ctx.service.collector_max_bytes)
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from exc
    try:
        records = records_of(payload)
    except BodyError as exc:
        raise HTTPException(400, str(exc)) from exc
    if not records:
        raise HTTPException(400, "no records in the request")
    if len(records) > ctx.service.collector_max_records:
        raise HTTPException(413, f"{len(records):,} records exceed the limit of "
                                 f"{ctx.service.collector_max_records:,} per request")
    results, by_day = check_records(records, tenant_id)

    def land() -> list[str]:
        # fsync'ed and renamed into place before we answer: an acknowledged record is durable
        return [str(write_landing_file(ctx.landing, day, _source_name(tenant_id), lines)
                    .relative_to(ctx.landing)) for day, lines in sorted(by_day.items())]

    files = await run_in_threadpool(land) if by_day else []
    accepted = sum(r["accepted"] for r in results)
    return S.CollectorOut(accepted=accepted, rejected=len(results) - accepted,
                          results=[S.RecordResult(**r) for r in results], files=files)
