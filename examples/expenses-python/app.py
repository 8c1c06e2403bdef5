"""Expense claims as a Keel plugin in Python (componentize-py).

The same module as examples/expenses-rust: employees submit claims with POST /claims; someone
holding plugins.expenses:approve (and not the claimant) approves them, which posts the expense
against the reimbursement liability, or rejects them with a reason.
"""

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import authz, ledger, storage, types
from wit_world.imports.http import Header, Request, Response
from wit_world.imports.plugin_meta import PluginManifest

VERSION = "1.0.0"
APPROVE = "plugins.expenses:approve"
DEFAULT_SETTINGS = {"expense_account": "6600", "payable_account": "2100"}
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PAGE_ITEMS = 500


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


def amount_of(field: str, text: str) -> Decimal:
    try:
        amount = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise invalid([(field, f"{text!r} is not a decimal number")])
    if not amount.is_finite():
        raise invalid([(field, f"{text!r} is not a decimal number")])
    return amount


def canonical(amount: Decimal) -> str:
    return format(amount.normalize(), "f")


def key(claim_id: int) -> str:
    return f"{claim_id:012d}"


def get(collection: str, name: str):
    text = storage.get(collection, name)
    return None if text is None else json.loads(text)


def put(collection: str, name: str, value) -> None:
    storage.put(collection, name, json.dumps(value))


def all_claims() -> list:
    claims, after = [], None
    while True:
        page = storage.query("claims", storage.KeyRange(None, None, after, PAGE_ITEMS))
        claims.extend(json.loads(item.value) for item in page)
        if len(page) < PAGE_ITEMS:
            return claims
        after = page[-1].key


def user_id() -> Optional[int]:
    return authz.principal().user_id


def parse_body(request: Request) -> dict:
    try:
        body = json.loads(request.body or b"null")
    except ValueError as error:
        raise invalid([("body", f"is not the JSON expected: {error}")])
    if not isinstance(body, dict):
        raise invalid([("body", "is a JSON object")])
    return body


def submit(request: Request) -> Response:
    body = parse_body(request)
    unknown = set(body) - {"description", "amount", "date", "employee"}
    errors = [(name, "is not a field of a claim") for name in sorted(unknown)]
    description = body.get("description")
    if not isinstance(description, str) or not description.strip():
        errors.append(("description", "must not be empty"))
    amount = None
    try:
        amount = amount_of("amount", body.get("amount"))
        if amount <= 0:
            errors.append(("amount", "must be greater than zero"))
    except Problem as bad:
        errors.extend((e.field, e.message) for e in bad.error.value)
    date = body.get("date")
    if not isinstance(date, str) or not DATE.match(date):
        errors.append(("date", "is a date as YYYY-MM-DD"))
    employee = body.get("employee")
    if employee is not None and not isinstance(employee, int):
        errors.append(("employee", "is a party id"))
    if errors:
        raise invalid(errors)
    claim_id = (get("counters", "claims") or 0) + 1
    put("counters", "claims", claim_id)
    claim = {
        "id": claim_id,
        "description": description.strip(),
        "amount": canonical(amount),
        "date": date,
        "employee": employee,
        "status": "submitted",
        "submitted_by": user_id(),
        "decided_by": None,
        "entry": None,
        "reason": None,
    }
    put("claims", key(claim_id), claim)
    return respond(201, claim)


def load(text_id: str) -> dict:
    if not text_id.isdigit():
        raise Problem(types.Error_NotFound("claim ids are numbers"))
    claim = get("claims", key(int(text_id)))
    if claim is None:
        raise Problem(types.Error_NotFound(f"no claim {int(text_id)}"))
    return claim


def decidable(text_id: str) -> dict:
    if not authz.allowed(APPROVE):
        raise Problem(types.Error_Denied(f"deciding on claims needs the permission {APPROVE}"))
    claim = load(text_id)
    if claim["status"] != "submitted":
        raise Problem(types.Error_Conflict(f"claim {claim['id']} is {claim['status']} already"))
    if claim["submitted_by"] is not None and claim["submitted_by"] == user_id():
        raise Problem(types.Error_Denied("nobody decides on their own claim"))
    return claim


def approve(text_id: str) -> Response:
    claim = decidable(text_id)
    settings = get("settings", "accounts") or DEFAULT_SETTINGS

    def line(account: str, debit: bool) -> ledger.Line:
        amount = claim["amount"]
        return ledger.Line(
            account,
            amount if debit else None,
            None if debit else amount,
            None,
            None,
            claim["employee"],
            None,
            [],
        )

    entry = ledger.Entry(
        claim["date"],
        f"Expense claim {claim['id']}: {claim['description']}",
        [line(settings["expense_account"], True), line(settings["payable_account"], False)],
        f"claim-{claim['id']}",
    )
    claim["entry"] = ledger.post(entry, f"claim-{claim['id']}-approval")
    claim["status"] = "approved"
    claim["decided_by"] = user_id()
    put("claims", key(claim["id"]), claim)
    return respond(200, claim)


def reject(text_id: str, request: Request) -> Response:
    claim = decidable(text_id)
    body = parse_body(request) if request.body else {}
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise invalid([("reason", "is text")])
    claim["status"] = "rejected"
    claim["decided_by"] = user_id()
    claim["reason"] = reason
    put("claims", key(claim["id"]), claim)
    return respond(200, claim)


def route(request: Request) -> Response:
    parts = [p for p in request.path.strip("/").split("/")]
    method = request.method
    if parts == ["claims"]:
        if method == "POST":
            return submit(request)
        if method == "GET":
            return respond(200, {"claims": all_claims()})
        return respond(405, {"status": 405, "detail": f"{method} is not allowed"})
    if len(parts) == 2 and parts[0] == "claims":
        if method == "GET":
            return respond(200, load(parts[1]))
        return respond(405, {"status": 405, "detail": f"{method} is not allowed"})
    if len(parts) == 3 and parts[0] == "claims" and parts[2] in ("approve", "reject"):
        if method != "POST":
            return respond(405, {"status": 405, "detail": f"{method} is not allowed"})
        return approve(parts[1]) if parts[2] == "approve" else reject(parts[1], request)
    return respond(404, {"status": 404, "detail": f"no route for {method} {request.path}"})


class WitWorld(wit_world.WitWorld):
    def manifest(self) -> PluginManifest:
        return PluginManifest(
            "expenses",
            VERSION,
            "Expense claims: submit, approve into the ledger, reject",
            ["storage", "ledger:post"],
            [],
        )

    def migrate(self, from_version: Optional[str]) -> None:
        # A refused host call raises Err(error), which is this export's error result.
        if from_version is None:
            put("settings", "accounts", DEFAULT_SETTINGS)

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
        if operation != "summary":
            raise Err(types.Error_NotFound(f"no operation {operation!r}"))
        summary = {}
        for claim in all_claims():
            entry = summary.setdefault(claim["status"], {"count": 0, "total": "0"})
            entry["count"] += 1
            entry["total"] = canonical(Decimal(entry["total"]) + Decimal(claim["amount"]))
        return json.dumps(summary)
