"""The log collector: ``POST /v1/interactions`` with a per-tenant ``X-API-Key``.

Each record is validated against the interaction contract (``ml.schema.validate_record``) after a
check that it can be stored at all (``service.jsonbody.first_problem``: no lone surrogate, no
out-of-range number, no deep nesting); its ``tenant_id`` is set to the key's tenant when absent
and must equal it when present. A rejected record is answered with its index and a reason naming
the field; it never stops the others. The accepted records are encoded, then written to the
landing zone as one unit (one file per UTC day of the records' timestamps, all days or none,
fsynced and renamed into a folder, or PUT whole under a new object name on a bucket:
``ml.landing.write_parts``) *before* the answer, so every record the answer calls accepted
survives a crash right after it, and a failed write leaves nothing to pile up on retry. Several
collector processes or pods may write the same day: every file gets a name no other writer uses.

Only the body is read on the event loop; decoding, validation and writing (``handle_records``)
run in a worker process for a large body (``service.workers``: its own interpreter lock) and in a
worker thread for a small one, so a batch does not hold up other requests.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ml.landing import timestamp_problem, write_parts
from ml.landing_store import LandingStore
from ml.schema import RecordError, validate_record
from service import schemas as S
from service.deps import collector_key_scheme, get_ctx
from service.jsonbody import BodyError, decode, encodable, first_problem
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


log = logging.getLogger("learnloop.service.collector")


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
        iid = iid if isinstance(iid, str) and encodable(iid) else None  # never echo bad text
        reason: str | None = None
        if (problem := first_problem(obj)) is not None:
            reason = f"{problem[0]}: {problem[1]}"
        elif isinstance(obj, dict) and "tenant_id" in obj and obj["tenant_id"] != tenant_id:
            reason = (f"tenant_id {str(obj['tenant_id'])[:128]!r} does not match the API key's "
                      f"tenant {tenant_id!r}")
        else:
            try:
                rec = validate_record({**obj, "tenant_id": tenant_id} if isinstance(obj, dict)
                                      else obj)
            except RecordError as exc:
                reason = exc.reason
            else:
                if (problem := timestamp_problem(rec.timestamp)) is not None:
                    reason = problem  # a future day must not be created in the landing zone
                elif rec.interaction_id in seen:
                    reason = f"duplicate interaction_id {rec.interaction_id!r} in this request"
                else:
                    seen.add(rec.interaction_id)
                    by_day[rec.timestamp.date().isoformat()].append({**obj, "tenant_id": tenant_id})
        results.append({"index": index, "interaction_id": iid, "accepted": reason is None,
                        "reason": reason})
    return results, dict(by_day)


def encode_days(by_day: dict[str, list[dict]]) -> dict[str, bytes]:
    """The JSONL bytes of each day's accepted records (``check_records`` made sure they encode)."""
    return {day: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")
            for day, recs in sorted(by_day.items())}


def _source_name(tenant_id: str, prefix: str = "collector") -> str:
    """The landing file name's source part for a tenant's records (``collector-<tenant>``; the
    serving API's are ``served-<tenant>``)."""
    return (f"{prefix}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", tenant_id))[:40]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and re.fullmatch(r"[0-9]+", declared) and (
            len(declared) > 18 or int(declared) > limit):  # ASCII digits; no int() of 5,000
        what = f"{int(declared):,} bytes" if len(declared) <= 18 else f"{len(declared):,} digits"
        raise HTTPException(413, f"request body of {what} exceeds the limit of {limit:,} bytes")
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
               413: {"model": S.ErrorOut, "description": "too many records or bytes"},
               503: {"model": S.ErrorOut,
                     "description": "the landing zone could not be written; nothing was"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _BODY_SCHEMA}}}},
)
async def post_interactions(request: Request,
                            api_key: str | None = Depends(collector_key_scheme)) -> Response:
    ctx = get_ctx(request)

    def lookup() -> str | None:
        with session_scope(ctx.url) as s:
            return collector_keys.tenant_for_key(s, api_key)

    tenant_id = await run_in_threadpool(lookup)
    if tenant_id is None:
        raise HTTPException(401, "missing, unknown or revoked X-API-Key",
                            headers={"WWW-Authenticate": "X-API-Key"})
    raw = await _read_body(request, ctx.service.collector_max_bytes)
    # decoding, validation and the fsynced writes are CPU and disk work: never on the event loop.
    # A large body goes to a worker process (its own GIL: the loop keeps answering at once);
    # a small one to a worker thread (cheaper than the hop to another process)
    args = (raw, tenant_id, ctx.landing, ctx.service.collector_max_records)
    if ctx.collector_pool is not None and len(raw) >= ctx.service.collector_process_min_bytes:
        try:
            status, body = await ctx.collector_pool.run(handle_records, *args)
        except BrokenProcessPool:
            log.error("a collector worker process died; the pool is restarted")
            ctx.collector_pool.reset()
            raise HTTPException(503, "the request could not be processed (a worker process "
                                     "stopped); retry it") from None
    else:
        status, body = await run_in_threadpool(handle_records, *args)
    return Response(body, status_code=status, media_type="application/json")


def _error(status: int, detail: str) -> tuple[int, bytes]:
    return status, json.dumps({"detail": detail}).encode()


def handle_records(raw: bytes, tenant_id: str, landing: LandingStore | Path,
                   max_records: int) -> tuple[int, bytes]:
    """Decode, check and land one request's body; return the HTTP status and the JSON answer.

    Runs in a worker thread or process (so it takes and returns plain values): 400 for a body that
    is not records, 413 for too many, 503 when the landing zone cannot be written (nothing was),
    else 200 with one result per record."""
    try:
        records = records_of(decode(raw))
    except BodyError as exc:
        return _error(400, str(exc))
    if not records:
        return _error(400, "no records in the request")
    if len(records) > max_records:
        return _error(413, f"{len(records):,} records exceed the limit of {max_records:,} per "
                           "request")
    results, by_day = check_records(records, tenant_id)
    files: list[str] = []
    if by_day:
        try:
            # all days or none, fsync'ed and renamed into place (a folder) or PUT whole under
            # a new name (object storage) before we answer
            files = write_parts(landing, _source_name(tenant_id), encode_days(by_day))
        except OSError as exc:
            log.error("landing write failed for tenant %r: %s", tenant_id, exc)
            return _error(503, "the landing zone could not be written (nothing was written); "
                               "retry later")
    accepted = sum(r["accepted"] for r in results)
    out = S.CollectorOut(accepted=accepted, rejected=len(results) - accepted,
                         results=[S.RecordResult(**r) for r in results], files=files)
    return 200, out.model_dump_json().encode()
