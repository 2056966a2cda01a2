"""The jobs API of newer ComfyUI: GET /api/jobs, GET /api/jobs/<id>, cancel one or many."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from farm.services import audit, jobs
from web.auth import principal
from web.context import BadJSON, farm, json_body

blueprint = Blueprint("jobs", __name__)


def _error(text: str, status: int = 400, **extra):
    return jsonify({"error": text, **extra}), status


@blueprint.get("/api/jobs")
def list_jobs():
    try:
        query = jobs.JobQuery.parse(request.args)
    except jobs.JobQueryError as exception:
        return _error(str(exception))
    return jsonify(jobs.list_jobs(farm().database, query, farm().settings, team=principal().scope))


@blueprint.get("/api/jobs/<job_id>")
def get_job(job_id: str):
    job = jobs.get_job(farm().database, job_id, farm().settings, team=principal().scope)
    return jsonify(job) if job is not None else _error("Job not found", 404)


def _cancel(job_ids: list[str]):
    who = principal()
    cancelled = jobs.cancel(farm(), job_ids, team=who.scope)
    if cancelled:
        audit.record_alone(farm().database, who, "prompt.cancel", f"team:{who.scope or 'all'}",
                           {"prompt_ids": job_ids[:100]})
    return jsonify({"cancelled": cancelled})


@blueprint.post("/api/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    return _cancel([job_id])


@blueprint.post("/api/jobs/cancel")
def cancel_jobs():
    try:
        body = json_body()
    except BadJSON:
        return _error("Request body must be JSON")
    job_ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(job_ids, list):
        return _error("job_ids must be a list of job ids")
    invalid = [job_id for job_id in job_ids if not jobs.is_job_id(job_id)]
    if invalid:
        return _error("Invalid job ids", invalid_ids=invalid)
    return _cancel(job_ids)
