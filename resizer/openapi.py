"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Written by hand, next to nothing else: the routes are few and stable, and the tests check this
document against the live app (schemathesis) so it cannot drift from what the code does.
"""

from __future__ import annotations

from typing import Any

from resizer import __version__
from resizer.models import MAX_WAIT_SECONDS, ImageSize, TaskStatus

_SIZES = [size.value for size in ImageSize]
_WAIT = f"{MAX_WAIT_SECONDS:g}"

_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "The id returned by POST /tasks.",
    "schema": {"type": "string"},
}


_METRICS: dict[str, Any] = {
    "description": "Metrics, in the text format or OpenMetrics (by the Accept header)",
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        "application/openmetrics-text": {"schema": {"type": "string"}},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_ERROR_RESPONSE}


_ERROR_RESPONSE: dict[str, Any] = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
}


def document() -> dict[str, Any]:
    doc = _document()
    # With RESIZER_API_TOKEN set, everything but the probes needs the bearer token.
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in doc["paths"].items():
        if path in ("/health", "/ready"):
            continue
        for operation in operations.values():
            operation["security"] = [{}, {"bearer": []}]
            operation["responses"]["401"] = _error(
                "RESIZER_API_TOKEN is set and the request lacks `Authorization: Bearer <token>`"
            )
    return doc


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "resizer",
            "version": __version__,
            "description": (
                "Resize square images to 64x64 and 32x32 through a reliable Redis queue. "
                'Every error has the shape {"error": {"code": ..., "message": ...}}.'
            ),
        },
        "paths": {
            "/tasks": {
                "post": {
                    "operationId": "createTask",
                    "summary": "Submit a square image",
                    "description": "The image as base64 in a JSON object (the default), or its "
                    "bytes as the body with `Content-Type: image/*` or "
                    "`application/octet-stream`: the same task, the same checks and errors.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CreateTask"}
                            },
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                            "image/*": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "Accepted: queued, joined an identical image in "
                            "flight, or DONE at once when the same bytes were resized before.",
                            "headers": {
                                "Location": {
                                    "description": "/tasks/{id}",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/TaskCreated"}
                                }
                            },
                        },
                        "400": _error("Not JSON, not an object, or `data` missing / not a string"),
                        "408": _error(
                            "The body stalled for RESIZER_BODY_TIMEOUT, or arrived slower than "
                            "RESIZER_BODY_MIN_RATE; the connection is closed"
                        ),
                        "413": _error("The body is over RESIZER_MAX_BODY_BYTES"),
                        "415": _error(
                            "The body is compressed (a Content-Encoding other than identity)"
                        ),
                        "422": _error(
                            "`data` is not base64, empty, not an image, not square, "
                            "or over RESIZER_MAX_PIXELS"
                        ),
                        "503": _error(
                            "Redis is unreachable, or this server holds RESIZER_UPLOAD_BUDGET of "
                            "uploads already (overloaded)"
                        ),
                        "507": _error("Redis is full (maxmemory with noeviction)"),
                    },
                }
            },
            "/tasks/{task_id}": {
                "get": {
                    "operationId": "getTask",
                    "summary": "A task's status; with ?wait, long-poll until it finishes",
                    "parameters": [
                        _ID,
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "description": f"Seconds to wait for DONE or FAILED (0 to {_WAIT}).",
                            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The task",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Task"}
                                }
                            },
                        },
                        "400": _error(f"`wait` is not a number from 0 to {_WAIT}"),
                        "404": _error("Unknown task, or its retention expired"),
                        "503": _error("Redis is unreachable"),
                    },
                },
                "delete": {
                    "operationId": "deleteTask",
                    "summary": "Delete a task; its images go unless another task shares them",
                    "parameters": [_ID],
                    "responses": {
                        "204": {"description": "Deleted"},
                        "404": _error("Unknown task, or its retention expired"),
                        "503": _error("Redis is unreachable"),
                    },
                },
            },
            "/tasks/{task_id}/image": {
                "get": {
                    "operationId": "getImage",
                    "summary": "One size of a task's image",
                    "description": "JSON with base64 `data` by default; the bytes themselves "
                    "with `Accept: image/*` or `?raw=1`.",
                    "parameters": [
                        _ID,
                        {
                            "name": "size",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "enum": _SIZES},
                        },
                        {
                            "name": "raw",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["1", "true", "yes"]},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The image",
                            "headers": {
                                "ETag": {
                                    "description": "Raw responses only",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Image"}
                                },
                                "image/*": {"schema": {"type": "string", "format": "binary"}},
                            },
                        },
                        "304": {"description": "Not modified (If-None-Match, raw responses)"},
                        "400": _error(f"`size` missing or not one of {', '.join(_SIZES)}"),
                        "404": _error("Unknown task, or its retention expired"),
                        "409": _error("A resized size before the task is DONE"),
                        "503": _error("Redis is unreachable"),
                    },
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: 200 while the process serves",
                    "responses": {
                        "200": {
                            "description": "Alive",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {"status": {"const": "ok"}},
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: 200 when Redis answers",
                    "responses": {
                        "200": {
                            "description": "Ready",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status", "checks"],
                                        "properties": {
                                            "status": {"const": "ready"},
                                            "checks": {"type": "object"},
                                        },
                                    }
                                }
                            },
                        },
                        "503": {
                            "description": "A dependency is failing; `failing` names it",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ReadyError"}
                                }
                            },
                        },
                    },
                }
            },
            "/info": {
                "get": {
                    "operationId": "info",
                    "summary": "The queue at a glance: lengths, tasks in flight, workers, "
                    "recent failures (resizer info)",
                    "parameters": [
                        {
                            "name": "failures",
                            "in": "query",
                            "required": False,
                            "description": "How many recent failures to list.",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 100},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The queue",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": [
                                            "at",
                                            "stats",
                                            "taken_unclaimed",
                                            "in_flight",
                                            "workers",
                                            "failures",
                                        ],
                                    }
                                }
                            },
                        },
                        "400": _error("`failures` is not a whole number from 0 to 100"),
                        "503": _error("Redis is unreachable"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "This process's Prometheus metrics (scrape every replica)",
                    "responses": {"200": _METRICS},
                }
            },
            "/metrics/cluster": {
                "get": {
                    "operationId": "clusterMetrics",
                    "summary": "The queue's Prometheus metrics, as Redis holds them (scrape once)",
                    "responses": {"200": _METRICS},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Status": {"type": "string", "enum": [status.value for status in TaskStatus]},
                "CreateTask": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "string",
                            "description": "The image, base64 (a data: URL prefix and line "
                            "breaks are accepted)",
                        }
                    },
                },
                "TaskCreated": {
                    "type": "object",
                    "required": ["id", "status"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string"},
                        "status": {"$ref": "#/components/schemas/Status"},
                    },
                },
                "Task": {
                    "type": "object",
                    "required": ["id", "status", "created_at", "updated_at", "attempts"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string"},
                        "status": {"$ref": "#/components/schemas/Status"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "attempts": {"type": "integer", "minimum": 0},
                        "error": {"type": "string", "description": "Only when FAILED"},
                    },
                },
                "Image": {
                    "type": "object",
                    "required": ["id", "size", "width", "height", "format", "data"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string"},
                        "size": {"type": "string", "enum": _SIZES},
                        "width": {"type": "integer", "minimum": 1},
                        "height": {"type": "integer", "minimum": 1},
                        "format": {"type": "string"},
                        "data": {"type": "string", "contentEncoding": "base64"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "additionalProperties": False,
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "ReadyError": {
                    "allOf": [{"$ref": "#/components/schemas/Error"}],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "failing"],
                            "properties": {
                                "failing": {"type": "array", "items": {"type": "string"}}
                            },
                        }
                    },
                },
            },
            "responses": {
                "Error": {"description": "An error", **_ERROR_RESPONSE},
            },
        },
    }
