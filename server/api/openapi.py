"""OpenAPI: the routes that read raw bodies (msgpack or JSON) get their schemas and content types here."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.api.errors import OPENAI_PATHS
from server.api.schemas import EmbeddingsIn, EncodeRequestIn

REF = "#/components/schemas/{model}"
_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}
ENCODE_OPENAPI = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model="EncodeRequestIn")}},
        "application/msgpack": {"schema": {"$ref": REF.format(model="EncodeRequestIn")}},
        "application/x-msgpack": {"schema": {"$ref": REF.format(model="EncodeRequestIn")}},
    }},
    "responses": {
        "200": {"description": "Per item, in input order, the outputs asked for (params.output_types: dense, "
                               "sparse, multivector). msgpack by default (arrays as msgpack-numpy maps with "
                               "bytes keys); JSON when Accept asks for it.",
                "content": {"application/msgpack": {"schema": {"$ref": REF.format(model="EncodeResponse")}},
                            "application/json": {"schema": {"$ref": REF.format(model="EncodeResponse")}}}},
        **{code: _ERROR for code in ("400", "401", "404", "413", "500", "502", "503")},
    },
}
_COMPONENTS = {
    "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
    "Error": {"type": "object", "required": ["detail"], "properties": {"detail": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "EncodeResponse": {"type": "object", "required": ["model", "items", "timing", "usage"], "properties": {
        "model": {"type": "string"},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string", "description": "the item's id as sent, an integer as its decimal string"},
            "dense": {"type": "object", "properties": {"dims": {"type": "integer"}, "dtype": {"type": "string"},
                                                       "values": {}}},
            "sparse": {"type": "object", "properties": {
                "dims": {"type": "integer"}, "dtype": {"type": "string"}, "indices": {}, "values": {}}},
            "multivector": {"type": "object", "properties": {
                "token_dims": {"type": "integer"}, "num_tokens": {"type": "integer"}, "dtype": {"type": "string"},
                "values": {}}}}}},
        "timing": {"type": "object", "additionalProperties": {"type": "number"}},
        "usage": {"type": "object", "properties": {"input_tokens": {"type": "integer"}}}}},
}


def install_openapi(app: FastAPI) -> None:
    def schema() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for model in (EncodeRequestIn, EmbeddingsIn):
                generated = model.model_json_schema(ref_template=REF)
                components.update(generated.pop("$defs", {}))
                components[model.__name__] = generated
            components.update(_COMPONENTS)
            _document_errors(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema


def _document_errors(document: dict) -> None:
    """Our routes answer 400 (never FastAPI's 422) and may answer 401/404/503 in our error shapes."""
    for path, operations in document["paths"].items():
        error = "OpenAIError" if path in OPENAI_PATHS else "Error"
        response = {"description": "Error", "content": {"application/json": {
            "schema": {"$ref": REF.format(model=error)}}}}
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code in ("400", "401", "404", "413", "500", "502", "503"):
                responses.setdefault(code, response)
            if path.endswith("/embeddings"):
                responses["200"] = {"description": "OpenAI embedding list", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["object", "data", "model", "usage"]}}}}
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
