"""Response models of the templates resource."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.services.templates import PromptTemplate, VariableType, VariableValue


class TemplateVariableOut(BaseModel):
    name: str
    type: VariableType
    required: bool
    default: VariableValue | None
    max_length: int | None


class TemplateOut(BaseModel):
    id: str
    version: str
    description: str
    variables: list[TemplateVariableOut]

    @classmethod
    def of(cls, template: PromptTemplate) -> TemplateOut:
        spec = template.spec
        variables = [
            TemplateVariableOut(
                name=v.name, type=v.type, required=v.is_required, default=v.default, max_length=v.max_length
            )
            for v in spec.variables
        ]
        return cls(id=spec.id, version=spec.version, description=spec.description, variables=variables)


class TemplateList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TemplateOut]
