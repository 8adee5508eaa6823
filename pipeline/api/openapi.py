"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``).

Written by hand, next to the handlers, and describing only what exists: ``tests/test_api.py``
validates the document itself and every real response of the suite against it, so the two
cannot drift apart silently.
"""

from __future__ import annotations

import copy
from typing import Any

from pipeline.api import domains, webhooks
from pipeline.api.events import add_events_operation
from pipeline.api.send import add_send_operation
from pipeline.events.messages import LOG_STATES

_STATES = list(LOG_STATES)
_NULLABLE_STR = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


_SUMMARY_PROPS: dict[str, Any] = {
    "queue_id": {"type": "string"},
    "accepted_at": {"type": "number", "description": "Unix time"},
    "mail_from": _NULLABLE_STR,
    "subject": _NULLABLE_STR,
    "message_id": _NULLABLE_STR,
    "credential": _NULLABLE_STR,
    "campaign_id": _NULLABLE_STR,
    "letter_id": _NULLABLE_STR,
    "size": {"type": "integer", "minimum": 0},
    "client_ip": _NULLABLE_STR,
    "tls": {"type": "boolean"},
    "listener": _NULLABLE_STR,
    "helo": _NULLABLE_STR,
    "recipients": {"type": "array", "items": _ref("Recipient")},
}

_CRED_PROPS: dict[str, Any] = {
    "name": {"type": "string"}, "kind": {"type": "string", "enum": ["apikey", "password", "ip"]},
    "username": _NULLABLE_STR, "key_id": _NULLABLE_STR, "disabled": {"type": "boolean"},
    "sandbox": {"type": "boolean"},
    "features": {"type": "object", "additionalProperties": {"type": "boolean"}},
    "locked": {"type": "array", "items": {"type": "string"}},
    "allowed_sender_domains": {"type": "array", "items": {"type": "string"}},
    "max_message_size": {"type": ["integer", "null"]},
    "max_recipients": {"type": ["integer", "null"]},
    "messages_per_minute": {"type": ["integer", "null"]},
    "source": {"type": "string", "enum": ["config", "store"]},
}

_QUERY = [
    ("recipient", "An envelope recipient (case-insensitive)."),
    ("sender", "The envelope sender (case-insensitive)."),
    ("message_id", "The Message-Id header, with or without angle brackets."),
    ("queue_id", "The gateway's queue id."),
    ("campaign", "X-Campaign-Id (or the daily campaign)."),
    ("credential", "The credential that sent it (a tenant's token always sees only its own)."),
    ("since", "Accepted at or after: YYYY-MM-DD (UTC) or an ISO date-time."),
    ("until", "Accepted before the end of: YYYY-MM-DD (UTC) or an ISO date-time."),
    ("cursor", "The `next` value of the previous page."),
]


def openapi_document() -> dict[str, Any]:
    """The document; a fresh dict each call (callers may not share mutations). The areas in their own
    modules (webhooks, domains) add their paths and schemas (:func:`_with_areas`)."""
    return _with_areas(_document())


def _with_areas(doc: dict[str, Any]) -> dict[str, Any]:
    for area in (webhooks, domains):
        doc["paths"].update(copy.deepcopy(area.OPENAPI_PATHS))
        doc["components"]["schemas"].update(copy.deepcopy(area.OPENAPI_SCHEMAS))
    return doc


def _document() -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}} for n, d in _QUERY
    ]
    params.append({"name": "state", "in": "query", "required": False,
                   "description": "Messages with at least one recipient in this state.",
                   "schema": {"type": "string", "enum": _STATES}})
    params.append({"name": "limit", "in": "query", "required": False,
                   "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}})
    queue_id = {"name": "queue_id", "in": "path", "required": True, "schema": {"type": "string"}}
    credential = {"name": "credential", "in": "query", "required": False, "schema": {"type": "string"},
                  "description": "The credential's scope (an administrator's choice; a tenant has only its own)."}
    unauthorized = _error("No valid bearer token (`Authorization: Bearer sgt_...`).")
    throttled = _error("Too many failed tokens from this address; see Retry-After.")
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "smtpgate management API", "version": "1",
                 "description": "The message log of an smtpgate gateway. Tokens: `smtpgate api-tokens add`."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/messages": {"get": {
                "operationId": "searchMessages",
                "summary": "Search the message log, newest first.",
                "parameters": params,
                "responses": {
                    "200": {"description": "A page of messages",
                            "content": {"application/json": {"schema": _ref("MessageList")}}},
                    "400": _error("A parameter is invalid or unknown."),
                    "401": unauthorized, "429": throttled,
                },
            }},
            "/api/v1/messages/{queue_id}": {"get": {
                "operationId": "getMessage",
                "summary": "One message's story: acceptance, admission trace, every event, headers.",
                "parameters": [queue_id],
                "responses": {
                    "200": {"description": "The message",
                            "content": {"application/json": {"schema": _ref("MessageStory")}}},
                    "401": unauthorized, "404": _error("No such message (or not this token's credential)."),
                    "429": throttled,
                },
            }, "delete": {
                "operationId": "deleteMessage",
                "summary": "Remove a message from the queue; each waiting copy becomes a `discarded` event.",
                "parameters": [queue_id],
                "responses": {
                    "200": _json("Deleted", "DeleteResult"),
                    "401": unauthorized, "404": _error("Not in the queue (or not this token's credential)."),
                    "409": _error("A copy is in a delivery attempt right now."), "429": throttled,
                },
            }},
            "/api/v1/messages/{queue_id}/retry": {"post": {
                "operationId": "retryMessage",
                "summary": "Make the message's waiting copies due now.",
                "parameters": [queue_id],
                "responses": {
                    "200": _json("Copies made due", "RetryResult"),
                    "401": unauthorized, "404": _error("Not in the queue (or not this token's credential)."),
                    "429": throttled,
                },
            }},
            "/api/v1/messages/{queue_id}/hold": {"post": {
                "operationId": "holdMessage",
                "summary": "Stop the waiting copies from being attempted until released.",
                "parameters": [queue_id],
                "responses": {
                    "200": _json("Copies held", "HoldResult"),
                    "401": unauthorized, "404": _error("Not in the queue (or not this token's credential)."),
                    "409": _error("A copy is in a delivery attempt right now."), "429": throttled,
                },
            }},
            "/api/v1/messages/{queue_id}/release": {"post": {
                "operationId": "releaseMessage",
                "summary": "Held copies are queued again and due now.",
                "parameters": [queue_id],
                "responses": {
                    "200": _json("Copies released", "ReleaseResult"),
                    "401": unauthorized, "404": _error("Not in the queue (or not this token's credential)."),
                    "429": throttled,
                },
            }},
            "/api/v1/stats": {"get": {
                "operationId": "getStats",
                "summary": "Statistics per credential and campaign (a tenant's token: its own only).",
                "parameters": [credential,
                               {"name": "campaign", "in": "query", "required": False, "schema": {"type": "string"}},
                               {"name": "since", "in": "query", "required": False, "schema": {"type": "string"}},
                               {"name": "until", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {"200": _json("Statistics", "Stats"), "400": _error("A parameter is invalid."),
                              "401": unauthorized, "404": _error("Not this token's credential."),
                              "429": throttled},
            }},
            "/api/v1/credentials": {
                "get": {
                    "operationId": "listCredentials",
                    "summary": "SMTP credentials, never their secrets (a tenant: its own only).",
                    "responses": {"200": _json("Credentials", "CredentialList"), "401": unauthorized,
                                  "429": throttled},
                },
                "post": {
                    "operationId": "addCredential",
                    "summary": "Add an apikey or password credential (administrators); the secret is shown once.",
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": _ref("CredentialAdd")}}},
                    "responses": {"201": _json("Added, with its secret", "CredentialWithSecret"),
                                  "400": _error("Not JSON or an invalid field."), "401": unauthorized,
                                  "404": _error("A tenant's token."), "409": _error("The name exists."),
                                  "413": _error("Body over 64 KiB."), "429": throttled},
                },
            },
            **{f"/api/v1/credentials/{{name}}/{action}": {"post": {
                "operationId": f"{action}Credential",
                "summary": summary,
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("Done", schema), "401": unauthorized,
                              "404": _error("No such credential (or not this token's)."),
                              "409": _error("Declared in the config file, or no secret to rotate."),
                              "429": throttled},
            }} for action, summary, schema in (
                ("disable", "Refuse AUTH for it (administrators).", "Credential"),
                ("enable", "Accept AUTH again (administrators).", "Credential"),
                ("rotate", "A new secret, shown once; the old one stops working (administrators, or the "
                           "credential's own tenant token).", "RotatedSecret"),
            )},
            "/api/v1/webhooks/deliveries": {"get": {
                "operationId": "listWebhookDeliveries",
                "summary": "The latest webhook attempts, newest first (a tenant: its own events').",
                "parameters": [credential, {"name": "limit", "in": "query", "required": False,
                                            "schema": {"type": "integer", "minimum": 1, "maximum": 200}}],
                "responses": {"200": _json("Deliveries", "WebhookDeliveries"), "400": _error("Bad parameter."),
                              "401": unauthorized, "404": _error("Not this token's credential."), "429": throttled},
            }},
            "/api/v1/suppressions": {
                "get": {
                    "operationId": "listSuppressions",
                    "summary": "The stoplist: an administrator's every scope (or `credential`), a tenant's own.",
                    "parameters": [credential],
                    "responses": {"200": _json("Suppressed addresses", "SuppressionList"),
                                  "400": _error("Unknown parameter."), "401": unauthorized,
                                  "404": _error("Not this token's credential."), "429": throttled},
                },
                "post": {
                    "operationId": "addSuppression",
                    "summary": "Suppress an address (a tenant: for its credential; an administrator: for "
                               "`credential`, else for every credential).",
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": _ref("SuppressionAdd")}}},
                    "responses": {"201": _json("Added", "SuppressionAdded"),
                                  "200": _json("Already suppressed", "SuppressionAdded"),
                                  "400": _error("Not JSON, not an address, bad reason."), "401": unauthorized,
                                  "404": _error("Not this token's credential."),
                                  "413": _error("Body over 64 KiB."), "429": throttled},
                },
            },
            "/api/v1/suppressions.csv": {"get": {
                "operationId": "exportSuppressions",
                "summary": "The same list as CSV (address, credential, reason, suppressed_at).",
                "parameters": [credential],
                "responses": {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                              "400": _error("Unknown parameter."), "401": unauthorized,
                              "404": _error("Not this token's credential."), "429": throttled},
            }},
            "/api/v1/suppressions/{address}": {"delete": {
                "operationId": "removeSuppression",
                "summary": "Remove an address from one scope (`credential`; an administrator without it: global).",
                "parameters": [{"name": "address", "in": "path", "required": True, "schema": {"type": "string"}},
                               credential],
                "responses": {"204": {"description": "Removed"}, "400": _error("Unknown parameter."),
                              "401": unauthorized, "404": _error("Not suppressed in that scope."),
                              "429": throttled},
            }},
            "/api/v1/messages/{queue_id}/raw": {"get": {
                "operationId": "getRawMessage",
                "summary": "The spooled message's bytes, while it is still in the queue.",
                "parameters": [queue_id],
                "responses": {
                    "200": {"description": "RFC 5322 message",
                            "content": {"message/rfc822": {"schema": {"type": "string"}}}},
                    "401": unauthorized, "404": _error("Not in the queue (or not this token's credential)."),
                    "429": throttled,
                },
            }},
            "/api/v1/openapi.json": {"get": {
                "operationId": "getOpenApi", "summary": "This document.", "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "additionalProperties": False,
                          "properties": {"error": {"type": "string"}}},
                "Recipient": {
                    "type": "object", "required": ["address", "state"], "additionalProperties": False,
                    "properties": {"address": {"type": "string"}, "state": {"type": "string", "enum": _STATES},
                                   "updated_at": {"type": "number"}},
                },
                "RecipientStory": {
                    "type": "object", "required": ["address", "state"], "additionalProperties": False,
                    "properties": {
                        "address": {"type": "string"}, "state": {"type": "string", "enum": _STATES},
                        "updated_at": {"type": "number"},
                        "processing": {"type": "array", "items": _ref("TraceEntry"),
                                       "description": "The processing chain of this copy's last attempt."},
                        "final_headers": {"type": "array", "description": "The copy's header fields as it left.",
                                          "items": {"type": "array", "items": {"type": "string"},
                                                    "minItems": 2, "maxItems": 2}},
                    },
                },
                "MessageSummary": {
                    "type": "object", "additionalProperties": False,
                    "required": ["queue_id", "accepted_at", "mail_from", "subject", "credential", "campaign_id",
                                 "recipients"],
                    "properties": _SUMMARY_PROPS,
                },
                "MessageList": {
                    "type": "object", "required": ["messages", "next"], "additionalProperties": False,
                    "properties": {"messages": {"type": "array", "items": _ref("MessageSummary")},
                                   "next": {"type": ["string", "null"],
                                            "description": "Cursor of the next page; null on the last."}},
                },
                "Event": {
                    "type": "object", "required": ["type", "at", "recipient"],
                    "description": "accepted, delivered, deferred, bounced, expired, failed, discarded, opened, "
                                   "clicked, unsubscribed, complained; delivery results carry dsn, reply, relay, "
                                   "attempts.",
                    "properties": {"type": {"type": "string"}, "at": {"type": "number"}, "recipient": _NULLABLE_STR,
                                   "url": {"type": "string"}, "machine": {"type": "boolean"},
                                   "bounce_class": {"type": "string"}, "dsn": {"type": "string"},
                                   "reply": {"type": "string"}, "relay": {"type": "string"},
                                   "attempts": {"type": "integer"}},
                },
                "TraceEntry": {
                    "type": "object", "required": ["phase", "plugin", "verdict", "ms", "edits"],
                    "properties": {"phase": {"type": "string"}, "plugin": {"type": "string"},
                                   "verdict": {"type": "string"}, "ms": {"type": "number"},
                                   "edits": {"type": "array", "items": {"type": "string"}},
                                   "error": {"type": "string"}},
                },
                "QueueEntry": {
                    "type": "object", "required": ["recipient", "state", "attempts"],
                    "properties": {"recipient": {"type": "string"}, "state": {"type": "string"},
                                   "attempts": {"type": "integer"}, "next_attempt": {"type": ["number", "null"]},
                                   "last_reply": _NULLABLE_STR},
                },
                "RetryResult": {"type": "object", "required": ["queue_id", "due_now"], "additionalProperties": False,
                                "properties": {"queue_id": {"type": "string"}, "due_now": {"type": "integer"}}},
                "Credential": {
                    "type": "object", "additionalProperties": False,
                    "required": ["name", "kind", "disabled", "sandbox", "source"], "properties": _CRED_PROPS,
                },
                "CredentialWithSecret": {
                    "type": "object", "additionalProperties": False,
                    "required": ["name", "kind", "disabled", "sandbox", "source", "secret"],
                    "properties": {**_CRED_PROPS, "secret": {"type": "string"}},
                },
                "CredentialList": {"type": "object", "required": ["credentials"], "additionalProperties": False,
                                   "properties": {"credentials": {"type": "array", "items": _ref("Credential")}}},
                "CredentialAdd": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100},
                                   "kind": {"type": "string", "enum": ["apikey", "password"]},
                                   "username": {"type": "string"}, "sandbox": {"type": "boolean"},
                                   "features": {"type": "object", "additionalProperties": {"type": "boolean"}},
                                   "locked": {"type": "array", "items": {"type": "string"}},
                                   "allowed_sender_domains": {"type": "array", "items": {"type": "string"}},
                                   "max_message_size": {"type": "integer"}, "max_recipients": {"type": "integer"},
                                   "messages_per_minute": {"type": "integer"}},
                },
                "RotatedSecret": {"type": "object", "required": ["name", "secret"], "additionalProperties": False,
                                  "properties": {"name": {"type": "string"}, "secret": {"type": "string"}}},
                "WebhookDeliveries": {
                    "type": "object", "required": ["deliveries"], "additionalProperties": False,
                    "properties": {"deliveries": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["id", "event_id", "event", "url", "state", "attempts"],
                        "properties": {"id": {"type": "integer"}, "event_id": {"type": "integer"},
                                       "event": {"type": "string"}, "queue_id": _NULLABLE_STR,
                                       "credential": _NULLABLE_STR, "url": {"type": "string"},
                                       "state": {"type": "string", "enum": ["pending", "delivered", "dead"]},
                                       "attempts": {"type": "integer"}, "last_error": _NULLABLE_STR,
                                       "updated_at": {"type": "number"}}}}},
                },
                "StatsRow": {
                    "type": "object", "required": ["campaign", "sent", "delivered"],
                    "description": "Counts (sent, delivered, bounced, opens, unique_opens, clicks, unique_clicks, "
                                   "unsubscribes, complaints, ...) and rates (0-1).",
                    "properties": {"credential": {"type": "string"}, "campaign": {"type": "string"},
                                   "day": {"type": "string"}},
                    "additionalProperties": {"type": "number"},
                },
                "Stats": {
                    "type": "object", "required": ["campaigns", "days", "tags", "totals", "timeline"],
                    "additionalProperties": False,
                    "properties": {
                        "campaigns": {"type": "array", "items": _ref("StatsRow")},
                        "days": {"type": "array", "items": _ref("StatsRow")},
                        "tags": {"type": "array", "description": "One row per tag (a message with two tags counts "
                                 "under both).", "items": {"type": "object", "required": ["tag"],
                                                           "properties": {"tag": {"type": "string"}},
                                                           "additionalProperties": {"type": "number"}}},
                        "totals": {"type": "object", "additionalProperties": {"type": "number"}},
                        "timeline": {"type": "object", "required": ["bucket", "labels", "series"], "properties": {
                            "bucket": {"type": "string", "enum": ["hour", "day"]},
                            "labels": {"type": "array", "items": {"type": "string"}},
                            "series": {"type": "object",
                                       "additionalProperties": {"type": "array", "items": {"type": "integer"}}}}},
                    },
                },
                "HoldResult": {"type": "object", "required": ["queue_id", "held"], "additionalProperties": False,
                               "properties": {"queue_id": {"type": "string"}, "held": {"type": "integer"}}},
                "ReleaseResult": {"type": "object", "required": ["queue_id", "released"], "additionalProperties": False,
                                  "properties": {"queue_id": {"type": "string"}, "released": {"type": "integer"}}},
                "DeleteResult": {
                    "type": "object", "required": ["queue_id", "discarded"], "additionalProperties": False,
                    "properties": {"queue_id": {"type": "string"},
                                   "discarded": {"type": "array", "items": {"type": "string"}}},
                },
                "Suppression": {
                    "type": "object", "required": ["address", "credential", "reason", "time"],
                    "additionalProperties": False,
                    "properties": {"address": {"type": "string"}, "credential": _NULLABLE_STR,
                                   "reason": {"type": "string"}, "time": {"type": "number"}},
                },
                "SuppressionList": {"type": "object", "required": ["suppressions"], "additionalProperties": False,
                                    "properties": {"suppressions": {"type": "array", "items": _ref("Suppression")}}},
                "SuppressionAdd": {
                    "type": "object", "required": ["address"], "additionalProperties": False,
                    "properties": {"address": {"type": "string", "format": "email", "maxLength": 254},
                                   "reason": {"type": "string", "minLength": 1, "maxLength": 200},
                                   "credential": {"type": "string", "minLength": 1, "maxLength": 100}},
                },
                "SuppressionAdded": {
                    "type": "object", "required": ["address", "credential", "reason", "added"],
                    "additionalProperties": False,
                    "properties": {"address": {"type": "string"}, "credential": _NULLABLE_STR,
                                   "reason": {"type": "string"}, "added": {"type": "boolean"}},
                },
                "MessageStory": {
                    "type": "object", "additionalProperties": False,
                    "required": ["queue_id", "accepted_at", "mail_from", "credential", "recipients", "events",
                                 "spooled"],
                    "properties": {
                        **_SUMMARY_PROPS,
                        "headers": {"type": "array", "description": "As spooled, after admission.",
                                    "items": {"type": "array", "items": {"type": "string"},
                                              "minItems": 2, "maxItems": 2}},
                        "trace": {"type": "array", "items": _ref("TraceEntry"),
                                  "description": "The admission chain (end of DATA)."},
                        "recipients": {"type": "array", "items": _ref("RecipientStory")},
                        "events": {"type": "array", "items": _ref("Event")},
                        "spooled": {"type": "boolean"},
                        "queue": {"type": "array", "items": _ref("QueueEntry")},
                        "raw_url": {"type": "string"},
                    },
                },
            },
        },
    }
    add_send_operation(doc)  # POST /api/v1/messages, described beside its handler
    add_events_operation(doc)  # GET /api/v1/events (refusals: type=rejected)
    return doc
