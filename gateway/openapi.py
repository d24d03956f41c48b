"""The OpenAPI 3 document of the REST routes, generated from the descriptor set (`make openapi`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.auth import ADMIN_PREFIX, PUBLIC_PREFIXES
from gateway.limits import RATE_LIMITED_ROUTES
from gateway.routes import ROUTED_SERVICES

FDP = descriptor_pb2.FieldDescriptorProto

# The rules of a product's fields a merchant sets (catalog_svc.admin).
_PRODUCT_FIELDS: dict[str, dict[str, Any]] = {
    "name": {"minLength": 1, "maxLength": 200}, "description": {"maxLength": 5000},
    "category": {"pattern": "^[a-z0-9-]{1,64}$"}, "price": {"minimum": 1, "maximum": 2_000_000_000}}
# What the protos cannot say and the services enforce: ranges, enumerations, lengths (by message.field).
CONSTRAINTS: dict[str, dict[str, Any]] = {
    "ListProductsRequest.page": {"minimum": 1},
    "ListProductsRequest.limit": {"minimum": 1, "maximum": 100},
    # An empty string parameter counts as not given (docs/api.md).
    "ListProductsRequest.sort_by": {"enum": ["", "sales", "price", "name", "newest"]},
    "ListProductsRequest.sort_dir": {"enum": ["", "asc", "desc"]},
    "ListProductsRequest.category": {"pattern": "^[a-z0-9-]{0,64}$"},
    "ListProductsRequest.search": {"maxLength": 200},
    "ListOrdersRequest.page": {"minimum": 1},
    "ListOrdersRequest.limit": {"minimum": 1, "maximum": 100},
    "AddItemRequest.qty": {"minimum": 1, "maximum": 100},
    "AddItemRequest.sku": {"minLength": 1},
    "SetItemQuantityRequest.qty": {"minimum": 0, "maximum": 100},
    # 0: no expected price (cart_svc.service.MAX_EXPECTED_PRICE).
    "AddItemRequest.expected_price": {"minimum": 0, "maximum": 2_000_000_000},
    "SetItemQuantityRequest.expected_price": {"minimum": 0, "maximum": 2_000_000_000},
    "SetStockRequest.on_hand": {"minimum": 0, "maximum": 1_000_000},
    "CreateCampaignRequest.name": {"minLength": 1, "maxLength": 200},
    "CreateCampaignRequest.items": {"minItems": 1, "maxItems": 100},
    "NewCampaignItem.sku": {"minLength": 1},
    "NewCampaignItem.sale_price": {"minimum": 1},
    "NewCampaignItem.quota": {"minimum": 1},
    "NewCampaignItem.max_per_user": {"minimum": 0},
    "ListCampaignsRequest.status": {"enum": ["", "SCHEDULED", "LIVE", "ENDED", "CANCELLED"]},
    "ListCampaignsRequest.page": {"minimum": 1},
    "ListCampaignsRequest.limit": {"minimum": 1, "maximum": 100},
    # The merchant's product fields (catalog_svc.admin), in a create, a batch row and a patch alike. JSON null is an
    # absent field (the proto3 JSON mapping): a patch leaves that field as it is, a new product's description is empty.
    **{f"CreateProductRequest.{f}": c for f, c in _PRODUCT_FIELDS.items()},
    "CreateProductRequest.description": _PRODUCT_FIELDS["description"] | {"nullable": True},
    **{f"UpdateProductRequest.{f}": c | {"nullable": True} for f, c in _PRODUCT_FIELDS.items()},
    "UpdateProductRequest.listed": {"nullable": True},
    "CreateProductRequest.sku": {"pattern": "^[A-Za-z0-9._-]{1,64}$"},
    "ListProductChangesRequest.page": {"minimum": 1},
    "ListProductChangesRequest.limit": {"minimum": 1, "maximum": 100},
}
# google.protobuf.Value fields that carry one message's JSON or null (Envoy's transcoder prints an unset message
# field not at all, a Value's null as null): the message they carry.
NULL_OR = {"Product.campaign": ".shop.catalog.v1.ProductCampaign"}
# Request body fields a client must send.
REQUIRED_INPUT = {"AddItemRequest": ["sku", "qty"], "PayRequest": ["order_id", "amount", "method", "token"],
                  "SetStockRequest": ["on_hand"], "CreateCampaignRequest": ["name", "starts_at", "ends_at", "items"],
                  "NewCampaignItem": ["sku", "sale_price", "quota"],
                  "CreateProductRequest": ["sku", "name", "category", "price"], "BatchUpsertProductsRequest": ["products"]}
# Routes whose body may be left out (a cancel has nothing to say; `{}` is the same).
OPTIONAL_BODY = {("post", "/admin/campaigns/{campaign_id}:cancel")}
# Answer fields that are absent until they apply.
OPTIONAL_OUTPUT = {"Order.paid_at", "Order.payment_id", "AdminCampaign.cancelled_at", "ProductChange.before"}
# Statuses beyond the ones every route can answer, with the reasons behind them.
ROUTE_ERRORS = {
    ("get", "/catalogs/{sku}"): {"404": "PRODUCT_NOT_FOUND"},
    ("post", "/chart"): {"404": "PRODUCT_NOT_FOUND",
                         "409": "OUT_OF_STOCK, PRICE_CHANGED, SALE_SOLD_OUT, SALE_ENDED, PURCHASE_LIMIT"},
    ("put", "/chart/{sku}/{qty}"): {"404": "PRODUCT_NOT_FOUND",
                                    "409": "OUT_OF_STOCK, PRICE_CHANGED, SALE_SOLD_OUT, SALE_ENDED, PURCHASE_LIMIT"},
    ("post", "/checkout"): {"409": "OUT_OF_STOCK, SALE_ENDED, SALE_SOLD_OUT, PURCHASE_LIMIT"},
    ("post", "/payment"): {"404": "ORDER_NOT_FOUND", "409": "ORDER_EXPIRED, ALREADY_PAID, IDEMPOTENCY_KEY_REUSED",
                           "503": "UPSTREAM_UNAVAILABLE, PAYMENT_PROVIDER_UNAVAILABLE (retry with the same key)"},
    ("get", "/orders/{order_id}"): {"404": "ORDER_NOT_FOUND"},
    ("put", "/admin/stock/{sku}"): {"409": "BELOW_RESERVED"},
    ("get", "/admin/stock/{sku}"): {"404": "SKU_NOT_FOUND"},
    ("post", "/admin/stock/{sku}/adjustments"): {"400": "INVALID_ARGUMENT, IDEMPOTENCY_KEY_REQUIRED",
                                                 "409": "BELOW_RESERVED, IDEMPOTENCY_KEY_REUSED"},
    ("post", "/admin/campaigns"): {"404": "PRODUCT_NOT_FOUND", "409": "CAMPAIGN_OVERLAP, OUT_OF_STOCK"},
    ("post", "/admin/campaigns/{campaign_id}:cancel"): {"404": "CAMPAIGN_NOT_FOUND"},
    ("get", "/admin/campaigns/{campaign_id}"): {"404": "CAMPAIGN_NOT_FOUND"},
    ("get", "/campaigns/{campaign_id}"): {"404": "CAMPAIGN_NOT_FOUND"},
    ("post", "/admin/products"): {"409": "PRODUCT_EXISTS, IDEMPOTENCY_KEY_REUSED"},
    ("patch", "/admin/products/{sku}"): {"404": "PRODUCT_NOT_FOUND"},
    ("get", "/admin/products/{sku}/changes"): {"404": "PRODUCT_NOT_FOUND"},
}
_OPTIONAL_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
HEADERS = {
    ("post", "/checkout"): _OPTIONAL_KEY,
    ("post", "/admin/campaigns"): _OPTIONAL_KEY,
    ("post", "/admin/campaigns/{campaign_id}:cancel"): _OPTIONAL_KEY,
    ("post", "/payment"): {"name": "Idempotency-Key", "in": "header", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
    ("post", "/admin/stock/{sku}/adjustments"): {"name": "Idempotency-Key", "in": "header", "required": True,
                                                 "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
    ("post", "/admin/products"): {"name": "Idempotency-Key", "in": "header", "required": False,
                                  "schema": {"type": "string", "minLength": 1, "maxLength": 255}},
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _segment(seg: str) -> str:
    """A path segment as REST names it: a variable's field in camel case, a custom method's verb as it is."""
    field, brace, verb = seg.partition("}")
    return _camel(field) + brace + verb


class _Messages:
    """Message and enum descriptors of the set, by full name."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet):
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        for f in files.file:
            for m in f.message_type:
                self.messages[f".{f.package}.{m.name}"] = m
                for nested in m.nested_type:  # map entries
                    self.messages[f".{f.package}.{m.name}.{nested.name}"] = nested
            for e in f.enum_type:
                self.enums[f".{f.package}.{e.name}"] = e


def _field_schema(msg: descriptor_pb2.DescriptorProto, field: FDP, types: _Messages, refs: set[str]) -> dict:
    schema: dict[str, Any]
    if field.type == FDP.TYPE_INT32:
        schema = {"type": "integer", "format": "int32"}
    elif field.type == FDP.TYPE_BOOL:
        schema = {"type": "boolean"}
    elif field.type == FDP.TYPE_STRING:
        schema = {"type": "string"}
    elif field.type == FDP.TYPE_ENUM:
        schema = {"type": "string", "enum": [v.name for v in types.enums[field.type_name].value if v.number]}
    elif field.type_name == ".google.protobuf.Timestamp":
        schema = {"type": "string", "format": "date-time"}
    elif f"{msg.name}.{field.name}" in NULL_OR:
        carried = NULL_OR[f"{msg.name}.{field.name}"]
        refs.add(carried)
        return {"nullable": True, "allOf": [{"$ref": f"#/components/schemas/{carried.rsplit('.', 1)[1]}"}]}
    elif field.type == FDP.TYPE_MESSAGE and types.messages[field.type_name].options.map_entry:
        _key, value = types.messages[field.type_name].field
        return {"type": "object", "additionalProperties": _field_schema(msg, value, types, refs)}
    elif field.type == FDP.TYPE_MESSAGE:
        name = field.type_name.rsplit(".", 1)[1]
        refs.add(field.type_name)
        schema = {"$ref": f"#/components/schemas/{name}"}
    else:
        raise ValueError(f"{msg.name}.{field.name}: no OpenAPI mapping for type {field.type}")
    schema |= CONSTRAINTS.get(f"{msg.name}.{field.name}", {})
    if field.label == FDP.LABEL_REPEATED:
        schema = {"type": "array", "items": schema}
    return schema


def _answer_schema(full_name: str, types: _Messages, schemas: dict) -> None:
    """Adds the schema of a message (an answer, or one inside a request's body) and of the messages it holds to
    `schemas`; an answer's fields are all required but OPTIONAL_OUTPUT, a body's as REQUIRED_INPUT says."""
    msg = types.messages[full_name]
    if msg.name in schemas:
        return
    refs: set[str] = set()
    props = {f.json_name: _field_schema(msg, f, types, refs) for f in msg.field}
    required = ([_camel(n) for n in REQUIRED_INPUT[msg.name]] if msg.name in REQUIRED_INPUT else
                [f.json_name for f in msg.field
                 if not f.proto3_optional and f"{msg.name}.{f.name}" not in OPTIONAL_OUTPUT])
    schemas[msg.name] = {"type": "object", "properties": props, "required": required}
    for ref in sorted(refs):
        _answer_schema(ref, types, schemas)


# A 429 tells the client when to come back.
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before sending the request again.",
                               "schema": {"type": "integer", "minimum": 1}}}
# Every route: the gateway refuses what passes a service's requests in flight (GATEWAY_MAX_REQUESTS_PER_SERVICE).
BUSY = "RATE_LIMITED with metadata.scope `gateway` (the service has as many requests in flight as the gateway lets through)"
# The routes that change state, besides: one user's requests past the per-user limit.
PER_USER = "RATE_LIMITED with metadata.scope `user` (this user's requests to the routes that change state passed " \
           "the per-user limit) or "


def _input_schema(full_name: str, types: _Messages, schemas: dict) -> None:
    """Adds the schema of a message a request body holds (a batch's rows) to `schemas`: its required fields are
    those REQUIRED_INPUT names, as in a body."""
    msg = types.messages[full_name]
    if msg.name in schemas:
        return
    refs: set[str] = set()
    schemas[msg.name] = {"type": "object", "properties": {f.json_name: _field_schema(msg, f, types, refs)
                                                          for f in msg.field},
                         "required": [_camel(n) for n in REQUIRED_INPUT.get(msg.name, [])]}
    for ref in sorted(refs):
        _input_schema(ref, types, schemas)


def _error_responses(statuses: dict[str, str]) -> dict:
    responses = {}
    for code, why in sorted(statuses.items()):
        responses[code] = {"description": f"reason: {why}",
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        if code == "429":
            responses[code]["headers"] = RETRY_AFTER
    return responses


ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "details"],
    "properties": {
        "code": {"type": "integer", "description": "The gRPC status code."},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {
            "type": "object",
            "required": ["@type"],
            "properties": {"@type": {"type": "string"}, "reason": {"type": "string"}, "domain": {"type": "string"},
                           "metadata": {"type": "object", "additionalProperties": {"type": "string"}}},
        }},
    },
}


def build(descriptor: Path) -> dict:
    """The OpenAPI document of every RPC with a google.api.http rule."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    types = _Messages(files)
    schemas: dict = {"Error": ERROR_SCHEMA}
    paths: dict = {}
    for f in files.file:
        for service in f.service:
            if f"{f.package}.{service.name}" not in ROUTED_SERVICES:
                continue
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                template = getattr(rule, verb)
                request = types.messages[method.input_type]
                # A segment is `{field}` or `{field}:verb` (a custom method).
                path_fields = {seg[1:seg.index("}")] for seg in template.split("/") if seg.startswith("{")}
                fields = {fld.name: fld for fld in request.field}
                refs: set[str] = set()
                params = [{"name": _camel(name), "in": "path", "required": True,
                           "schema": _field_schema(request, fields[name], types, refs)} for name in sorted(path_fields)]
                if (verb, template) in HEADERS:
                    params.append(HEADERS[(verb, template)])
                operation: dict = {"operationId": f"{service.name}.{method.name}", "tags": [service.name]}
                rest = [fld for fld in request.field if fld.name not in path_fields]
                if rule.body == "*":
                    required = [_camel(n) for n in REQUIRED_INPUT.get(request.name, [])]
                    body = {"type": "object",
                            "properties": {fld.json_name: _field_schema(request, fld, types, refs) for fld in rest}}
                    if required:
                        body["required"] = required
                    operation["requestBody"] = {"required": (verb, template) not in OPTIONAL_BODY,
                                                "content": {"application/json": {"schema": body}}}
                else:
                    params += [{"name": fld.json_name, "in": "query", "required": False,
                                "schema": _field_schema(request, fld, types, refs)} for fld in rest]
                if params:
                    operation["parameters"] = params
                for ref in sorted(refs):  # messages in the request (a body's items)
                    _answer_schema(ref, types, schemas)
                _answer_schema(method.output_type, types, schemas)
                for ref in sorted(refs):
                    _input_schema(ref, types, schemas)
                answer = method.output_type.rsplit(".", 1)[1]
                errors = {"400": "INVALID_ARGUMENT and the route's own reasons", "503": "UPSTREAM_UNAVAILABLE",
                          "431": "HEADERS_TOO_LARGE (URL and headers over 32 KiB)"}
                errors["429"] = (PER_USER if (verb, template) in RATE_LIMITED_ROUTES else "") + BUSY
                errors |= ROUTE_ERRORS.get((verb, template), {})
                if rule.body:
                    errors["413"] = "BODY_TOO_LARGE"
                if not template.startswith(PUBLIC_PREFIXES):
                    operation["security"] = [{"bearer": []}]
                    errors["401"] = "UNAUTHENTICATED"
                    errors["403"] = "PERMISSION_DENIED" + (" (needs role admin)" if template.startswith(ADMIN_PREFIX) else "")
                operation["responses"] = {"200": {"description": "OK", "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{answer}"}}}}} | _error_responses(errors)
                paths.setdefault("/".join(_segment(s) for s in template.split("/")), {})[verb] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "Shop storefront REST API", "version": "1.0.0",
                 "description": "Generated from protos/ by `make openapi`; do not edit by hand."},
        "servers": [{"url": "http://localhost:9000"}],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.items())),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


def render(descriptor: Path) -> str:
    """The document as the committed file holds it."""
    return json.dumps(build(descriptor), indent=1, sort_keys=False) + "\n"
