"""The Text Generation Inference API: POST /generate, /generate_stream and / (either), GET /info."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from app import __version__
from app.api.collect import collect_unless_disconnected
from app.api.dependencies import CompletionServiceDep, ReadyModelDep, RequestIdDep, SettingsDep
from app.api.idempotency import IDEMPOTENT
from app.api.openapi import GENERATION_ERRORS, IDEMPOTENCY_ERRORS, SSE_ANSWER, error_responses
from app.api.tgi.models import TGICompatRequest, TGIDetails, TGIInfo, TGIRequest, TGIResponse
from app.api.tgi.stream import tgi_sse
from app.core.config import Settings
from app.services.completion import CompletionService
from app.services.generation import GenerationRun

router = APIRouter(tags=["tgi"])

_Request = TypeVar("_Request", bound=TGIRequest)


async def _start(
    body: _Request, completions: CompletionService, settings: Settings, request_id: str
) -> tuple[_Request, GenerationRun]:
    """The run, and the request as the model saw it: PII redacted, which the full text echoes."""
    params = body.parameters.to_sampling_params(settings.model)
    started = await completions.start(request_id, [body.inputs], [params], param="inputs")
    [inputs], [run] = started.prompts, started.runs
    return body.model_copy(update={"inputs": inputs}), run


async def _whole(body: TGIRequest, run: GenerationRun, request: Request) -> TGIResponse:
    completion = await collect_unless_disconnected(run, request)
    params = body.parameters
    details = TGIDetails(
        finish_reason=params.finish_reason(completion.finish_reason),
        generated_tokens=completion.completion_tokens,
        seed=params.seed,
    )
    prefix = body.inputs if params.return_full_text else ""
    return TGIResponse(generated_text=prefix + completion.text, details=details if params.details else None)


@router.post(
    "/generate",
    dependencies=IDEMPOTENT,
    response_model=TGIResponse,
    response_model_exclude_none=True,
    responses=error_responses(*GENERATION_ERRORS, *IDEMPOTENCY_ERRORS),
)
async def generate(
    body: TGIRequest,
    request: Request,
    completions: CompletionServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> TGIResponse:
    body, run = await _start(body, completions, settings, request_id)
    return await _whole(body, run, request)


@router.post(
    "/generate_stream",
    dependencies=IDEMPOTENT,
    response_class=EventSourceResponse,
    responses={
        **error_responses(*GENERATION_ERRORS, *IDEMPOTENCY_ERRORS),
        200: {**SSE_ANSWER, "description": "Server-Sent Events."},
    },
)
async def generate_stream(
    body: TGIRequest,
    request: Request,
    completions: CompletionServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> EventSourceResponse:
    body, run = await _start(body, completions, settings, request_id)
    return tgi_sse(run, body, request, settings.engine.sse_ping_s)


@router.post(
    "/",
    dependencies=IDEMPOTENT,
    response_model=list[TGIResponse],
    response_model_exclude_none=True,
    responses=error_responses(*GENERATION_ERRORS, *IDEMPOTENCY_ERRORS, sse=True),
)
async def compat_generate(
    body: TGICompatRequest,
    request: Request,
    completions: CompletionServiceDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Any:
    """TGI's compatibility route (huggingface_hub's InferenceClient posts here): a list of one
    response, or the stream of /generate_stream."""
    body, run = await _start(body, completions, settings, request_id)
    if body.stream:
        return tgi_sse(run, body, request, settings.engine.sse_ping_s)
    return [await _whole(body, run, request)]


@router.get("/info", response_model=TGIInfo, responses=error_responses(503))
async def info(ready: ReadyModelDep, settings: SettingsDep) -> TGIInfo:
    context = ready.info.context_length
    return TGIInfo(
        model_id=ready.info.served_name,
        model_dtype=ready.info.dtype,
        model_device_type=ready.info.device,
        max_concurrent_requests=settings.engine.max_queue,
        max_input_tokens=context - 1,
        max_total_tokens=context,
        version=__version__,
    )
