"""Contract prices as a Keel plugin in Python (componentize-py), built against
keel:platform@0.2.1.

It implements the cpq plugin's extension point `cpq.price-adjust` with its `invoke` operation
"adjust": when a quote is priced, every line whose SKU has a contract price for the quote's
party gets that price instead of the price book's. Contract prices live in this plugin's own
storage and are set with PUT /contract-prices/{party}/{sku} {"unit_price": "...", "currency": "EUR"}.

A contract price is agreed in one currency: pricing a quote in another currency fails (the
hook raises `conflict`, and cpq refuses to price the quote) rather than silently ignoring the
contract.
"""

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import authz, storage, types
from wit_world.imports.http import Header, Request, Response
from wit_world.imports.plugin_meta import Hook, PluginManifest

VERSION = "1.0.0"
NAME = "contract-prices"
POINT = "cpq.price-adjust"
# Contract prices replace list prices before promotions and other adjustments that may
# follow with a higher order.
HOOK_ORDER = 10
WRITE = "plugins.contract-prices.prices:write"
COLLECTION = "prices"
CURRENCY = re.compile(r"^[A-Z]{3}$")
SKU = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Records fetched per storage call when listing.
PAGE_ITEMS = 500
# Most decimal places of a price, as cpq accepts them.
DECIMALS_MAX = 6


class Problem(Exception):
    """An error answered as a problem response."""

    def __init__(self, error: types.Error):
        super().__init__(error)
        self.error = error


def invalid(errors: list) -> Problem:
    return Problem(types.Error_Invalid([types.FieldError(f, m) for f, m in errors]))


def status_of(error: types.Error) -> int:
    return {
        types.Error_NotFound: 404,
        types.Error_Invalid: 422,
        types.Error_Denied: 403,
        types.Error_Conflict: 409,
        types.Error_LimitExceeded: 429,
    }.get(type(error), 500)


def respond(status: int, value, content_type: str = "application/json") -> Response:
    body = json.dumps(value).encode()
    return Response(status, [Header("content-type", content_type)], body)


def problem(error: types.Error) -> Response:
    body = {"status": status_of(error)}
    if isinstance(error, types.Error_Invalid):
        body["detail"] = "; ".join(f"{e.field}: {e.message}" for e in error.value)
        body["errors"] = [{"field": e.field, "message": e.message} for e in error.value]
    else:
        body["detail"] = error.value
    return respond(status_of(error), body, "application/problem+json")


def price_of(value) -> Decimal:
    """A non-negative decimal given as a string or a whole JSON number; raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("is a decimal number as a string, e.g. \"12.50\"")
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal number")
    if not price.is_finite():
        raise ValueError(f"{value!r} is not a decimal number")
    if price < 0:
        raise ValueError("is zero or more")
    if -price.as_tuple().exponent > DECIMALS_MAX:
        raise ValueError(f"has at most {DECIMALS_MAX} decimal places")
    return price


def canonical(amount: Decimal) -> str:
    text = format(amount.normalize(), "f")
    return "0" if Decimal(text) == 0 else text


def key(party: int, sku: str) -> str:
    return f"{party}/{sku}"


def load(party: int, sku: str) -> Optional[dict]:
    text = storage.get(COLLECTION, key(party, sku))
    return None if text is None else json.loads(text)


def parse_body(request: Request) -> dict:
    try:
        body = json.loads(request.body or b"null")
    except ValueError as error:
        raise invalid([("body", f"is not the JSON expected: {error}")])
    if not isinstance(body, dict):
        raise invalid([("body", "is a JSON object")])
    return body


def path_key(party_text: str, sku: str) -> tuple:
    if not party_text.isdigit():
        raise Problem(types.Error_NotFound("party ids are numbers"))
    if not SKU.match(sku):
        raise Problem(types.Error_NotFound(f"{sku!r} is not a SKU"))
    return int(party_text), sku


def require_write() -> None:
    if not authz.allowed(WRITE):
        raise Problem(types.Error_Denied(f"changing contract prices needs the permission {WRITE}"))


def put_price(party: int, sku: str, request: Request) -> Response:
    require_write()
    body = parse_body(request)
    errors = [(name, "is not a field of a contract price") for name in sorted(set(body) - {"unit_price", "currency"})]
    price = None
    try:
        price = price_of(body.get("unit_price"))
    except ValueError as error:
        errors.append(("unit_price", str(error)))
    currency = body.get("currency")
    if not isinstance(currency, str) or not CURRENCY.match(currency):
        errors.append(("currency", "is three upper-case letters, e.g. EUR"))
    if errors:
        raise invalid(errors)
    record = {"party": party, "sku": sku, "currency": currency, "unit_price": canonical(price)}
    storage.put(COLLECTION, key(party, sku), json.dumps(record))
    return respond(200, record)


def all_prices() -> list:
    prices, after = [], None
    while True:
        page = storage.query(COLLECTION, storage.KeyRange(None, None, after, PAGE_ITEMS))
        prices.extend(json.loads(item.value) for item in page)
        if len(page) < PAGE_ITEMS:
            return prices
        after = page[-1].key


def route(request: Request) -> Response:
    parts = request.path.strip("/").split("/")
    method = request.method
    if parts == ["contract-prices"]:
        if method == "GET":
            return respond(200, {"contract_prices": all_prices()})
        return respond(405, {"status": 405, "detail": f"{method} is not allowed"})
    if len(parts) == 3 and parts[0] == "contract-prices":
        party, sku = path_key(parts[1], parts[2])
        if method == "PUT":
            return put_price(party, sku, request)
        if method == "GET":
            record = load(party, sku)
            if record is None:
                raise Problem(types.Error_NotFound(f"no contract price for party {party} and {sku}"))
            return respond(200, record)
        if method == "DELETE":
            require_write()
            return respond(200, {"deleted": storage.delete(COLLECTION, key(party, sku))})
        return respond(405, {"status": 405, "detail": f"{method} is not allowed"})
    return respond(404, {"status": 404, "detail": f"no route for {method} {request.path}"})


def prices_of(party: int) -> dict:
    """The party's contract prices by SKU, read a page at a time: one host call per page
    instead of one per quote line. Keys are `<party>/<sku>`, and "0" follows "/"."""
    prices, after = {}, None
    while True:
        page = storage.query(COLLECTION, storage.KeyRange(f"{party}/", f"{party}0", after, PAGE_ITEMS))
        for item in page:
            record = json.loads(item.value)
            prices[record["sku"]] = record
        if len(page) < PAGE_ITEMS:
            return prices
        after = page[-1].key


def adjust(quote: dict) -> dict:
    """Replaces the unit price of each line that has a contract price for the quote's party."""
    party, currency = quote["party"], quote["currency"]
    prices = prices_of(party)
    for line in quote["lines"]:
        record = prices.get(line["sku"])
        if record is None:
            continue
        if record["currency"] != currency:
            raise Err(types.Error_Conflict(
                f"party {party} has a contract price for {line['sku']} in {record['currency']}, "
                f"not in {currency}: quote them in {record['currency']}"
            ))
        line["unit_price"] = record["unit_price"]
        line["notes"] = f"contract price for party {party}"
    return quote


class WitWorld(wit_world.WitWorld):
    def manifest(self) -> PluginManifest:
        return PluginManifest(
            NAME,
            VERSION,
            "Contract prices per customer and SKU, applied to cpq quotes",
            ["storage"],
            [],
            [],
            [],
            [Hook(POINT, "adjust", HOOK_ORDER)],
            ["adjust"],
            [],
        )

    def migrate(self, from_version: Optional[str]) -> None:
        return None

    def handle_http(self, request: Request) -> Response:
        try:
            return route(request)
        except Problem as bad:
            return problem(bad.error)
        except Err as error:
            # A host call refused: answer with its error.
            return problem(error.value)

    def on_event(self, event) -> None:
        return None

    def invoke(self, operation: str, input: str) -> str:
        if operation != "adjust":
            raise Err(types.Error_NotFound(f"no operation {operation!r}"))
        return json.dumps(adjust(json.loads(input)))
