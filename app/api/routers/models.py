"""GET /v1/models and /v1/models/{model_id}: the OpenAI model list, which is the one served model."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.dependencies import RuntimeDep
from app.api.errors import OpenAIRoute
from app.api.openai_schemas import ModelCard, ModelList
from app.core.errors import ModelNotFound
from app.llm.runtime import ModelRuntime

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)


def _card(runtime: ModelRuntime) -> ModelCard:
    return ModelCard(id=runtime.served_name, created=int(runtime.started_at), owned_by="llm-fastapi-service")


@router.get("/v1/models", response_model=ModelList)
async def list_models(runtime: RuntimeDep) -> ModelList:
    return ModelList(data=[_card(runtime)])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, runtime: RuntimeDep) -> ModelCard:
    if model_id != runtime.served_name:
        raise ModelNotFound(f"the model '{model_id}' does not exist; this server serves '{runtime.served_name}'",
                            param="model")  # fmt: skip
    return _card(runtime)
