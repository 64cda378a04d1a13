"""Typed accessors for what the lifespan put on app.state; tests override them per app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.core.metrics import LLMMetrics
from app.model.runtime import ModelRuntime, ReadyModel
from app.services.accounting import Caller
from app.services.chat import ChatService
from app.services.completion import CompletionService
from app.services.generation import GenerationPolicy, GenerationService
from app.services.sessions import SessionStore
from app.services.state import SharedState
from app.services.templates import TemplateRegistry, TemplateRenderer


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_runtime(request: Request) -> ModelRuntime:
    runtime: ModelRuntime = request.app.state.runtime
    return runtime


def get_sessions(request: Request) -> SessionStore:
    sessions: SessionStore = request.app.state.sessions
    return sessions


def get_shared_state(request: Request) -> SharedState:
    shared_state: SharedState = request.app.state.shared_state
    return shared_state


def get_policy(request: Request) -> GenerationPolicy:
    policy: GenerationPolicy = request.app.state.policy
    return policy


def get_metrics(request: Request) -> LLMMetrics:
    return get_policy(request).metrics


def get_templates(request: Request) -> TemplateRegistry:
    templates: TemplateRegistry = request.app.state.templates
    return templates


def get_request_id(request: Request) -> str:
    request_id: str = request.state.request_id
    return request_id


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]
SessionsDep = Annotated[SessionStore, Depends(get_sessions)]
SharedStateDep = Annotated[SharedState, Depends(get_shared_state)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
PolicyDep = Annotated[GenerationPolicy, Depends(get_policy)]
MetricsDep = Annotated[LLMMetrics, Depends(get_metrics)]
TemplatesDep = Annotated[TemplateRegistry, Depends(get_templates)]


def get_template_renderer(templates: TemplatesDep, policy: PolicyDep) -> TemplateRenderer:
    # Variables are checked for personal data as prompts are, before they are rendered in.
    return TemplateRenderer(templates, policy.pii.check_input)


TemplateRendererDep = Annotated[TemplateRenderer, Depends(get_template_renderer)]


def get_ready_model(runtime: RuntimeDep) -> ReadyModel:
    """503 (with Retry-After) until the model is loaded and warmed up."""
    return runtime.require_ready()


ReadyModelDep = Annotated[ReadyModel, Depends(get_ready_model)]


def get_caller(request: Request) -> Caller | None:
    """Who pays for this request's generations, as the guard identified it (None on an open route)."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return caller


CallerDep = Annotated[Caller | None, Depends(get_caller)]


def get_generation_service(ready: ReadyModelDep, policy: PolicyDep, caller: CallerDep) -> GenerationService:
    return GenerationService(ready.engine, ready.info.served_name, ready.info.context_length, policy, caller)


GenerationServiceDep = Annotated[GenerationService, Depends(get_generation_service)]


def get_completion_service(ready: ReadyModelDep, generation: GenerationServiceDep) -> CompletionService:
    return CompletionService(generation, ready.prompts)


CompletionServiceDep = Annotated[CompletionService, Depends(get_completion_service)]


def get_chat_service(ready: ReadyModelDep, sessions: SessionsDep, generation: GenerationServiceDep) -> ChatService:
    return ChatService(sessions, ready.prompts, generation)


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]
