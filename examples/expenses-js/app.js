// Expense claims as a Keel plugin in JavaScript (componentize-js).
//
// The same module as examples/expenses-rust: employees submit claims with POST /claims; someone
// holding plugins.expenses:approve (and not the claimant) approves them, which posts the
// expense against the reimbursement liability, or rejects them with a reason.
//
// Amounts are decimal strings end to end; the only arithmetic (the summary's totals) is done in
// integer hundred-thousandths with BigInt, never in floating point.

import * as storage from "keel:platform/storage@0.1.0";
import * as ledger from "keel:platform/ledger@0.1.0";
import * as authz from "keel:platform/authz@0.1.0";

const VERSION = "1.0.0";
const APPROVE = "plugins.expenses:approve";
const DEFAULT_SETTINGS = { expense_account: "6600", payable_account: "2100" };
const DATE = /^\d{4}-\d{2}-\d{2}$/;
const DECIMAL = /^-?\d+(\.\d+)?$/;
const SCALE = 5;
const PAGE_ITEMS = 500;

/** An error for the host: thrown from an export, its payload becomes the error result. */
class KeelError extends Error {
  constructor(tag, val) {
    super(typeof val === "string" ? val : tag);
    this.payload = { tag, val };
  }
}

const invalid = (errors) =>
  new KeelError("invalid", errors.map(([field, message]) => ({ field, message })));

const STATUS = { "not-found": 404, invalid: 422, denied: 403, conflict: 409, "limit-exceeded": 429 };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function respond(status, value, contentType = "application/json") {
  return {
    status,
    headers: [{ name: "content-type", value: contentType }],
    body: encoder.encode(JSON.stringify(value)),
  };
}

function problem(error) {
  const status = STATUS[error.tag] ?? 500;
  const body = { status };
  if (error.tag === "invalid") {
    body.detail = error.val.map((e) => `${e.field}: ${e.message}`).join("; ");
    body.errors = error.val.map((e) => ({ field: e.field, message: e.message }));
  } else {
    body.detail = error.val;
  }
  return respond(status, body, "application/problem+json");
}

/** The canonical form of a decimal string: no trailing zeros, no leading plus. */
function canonical(text) {
  let [whole, fraction = ""] = text.split(".");
  fraction = fraction.replace(/0+$/, "");
  whole = whole.replace(/^(-?)0+(?=\d)/, "$1");
  return fraction ? `${whole}.${fraction}` : whole;
}

function toUnits(text) {
  const [whole, fraction = ""] = text.split(".");
  const negative = whole.startsWith("-");
  const units = BigInt(whole.replace("-", "")) * 10n ** BigInt(SCALE) + BigInt(fraction.padEnd(SCALE, "0").slice(0, SCALE) || "0");
  return negative ? -units : units;
}

function fromUnits(units) {
  const negative = units < 0n;
  const digits = (negative ? -units : units).toString().padStart(SCALE + 1, "0");
  const text = `${digits.slice(0, -SCALE)}.${digits.slice(-SCALE)}`;
  return canonical(negative ? `-${text}` : text);
}

const key = (id) => String(id).padStart(12, "0");

function get(collection, name) {
  const text = storage.get(collection, name);
  return text === undefined ? null : JSON.parse(text);
}

function put(collection, name, value) {
  storage.put(collection, name, JSON.stringify(value));
}

function allClaims() {
  const claims = [];
  let after;
  for (;;) {
    const page = storage.query("claims", { start: undefined, end: undefined, after, limit: PAGE_ITEMS });
    for (const item of page) claims.push(JSON.parse(item.value));
    if (page.length < PAGE_ITEMS) return claims;
    after = page[page.length - 1].key;
  }
}

function userId() {
  const id = authz.principal().userId;
  return id === undefined ? null : Number(id);
}

function parseBody(request) {
  let body;
  try {
    body = JSON.parse(request.body.length ? decoder.decode(request.body) : "null");
  } catch (error) {
    throw invalid([["body", `is not the JSON expected: ${error.message}`]]);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw invalid([["body", "is a JSON object"]]);
  }
  return body;
}

function submit(request) {
  const body = parseBody(request);
  const errors = Object.keys(body)
    .filter((name) => !["description", "amount", "date", "employee"].includes(name))
    .sort()
    .map((name) => [name, "is not a field of a claim"]);
  const { description, amount, date, employee } = body;
  if (typeof description !== "string" || !description.trim()) {
    errors.push(["description", "must not be empty"]);
  }
  if (typeof amount !== "string" || !DECIMAL.test(amount.trim())) {
    errors.push(["amount", `${JSON.stringify(amount)} is not a decimal number`]);
  } else if (toUnits(amount.trim()) <= 0n) {
    errors.push(["amount", "must be greater than zero"]);
  }
  if (typeof date !== "string" || !DATE.test(date)) {
    errors.push(["date", "is a date as YYYY-MM-DD"]);
  }
  if (employee !== undefined && employee !== null && !Number.isInteger(employee)) {
    errors.push(["employee", "is a party id"]);
  }
  if (errors.length) throw invalid(errors);
  const id = (get("counters", "claims") ?? 0) + 1;
  put("counters", "claims", id);
  const claim = {
    id,
    description: description.trim(),
    amount: canonical(amount.trim()),
    date,
    employee: employee ?? null,
    status: "submitted",
    submitted_by: userId(),
    decided_by: null,
    entry: null,
    reason: null,
  };
  put("claims", key(id), claim);
  return respond(201, claim);
}

function load(textId) {
  if (!/^\d+$/.test(textId)) throw new KeelError("not-found", "claim ids are numbers");
  const claim = get("claims", key(Number(textId)));
  if (claim === null) throw new KeelError("not-found", `no claim ${Number(textId)}`);
  return claim;
}

function decidable(textId) {
  if (!authz.allowed(APPROVE)) {
    throw new KeelError("denied", `deciding on claims needs the permission ${APPROVE}`);
  }
  const claim = load(textId);
  if (claim.status !== "submitted") {
    throw new KeelError("conflict", `claim ${claim.id} is ${claim.status} already`);
  }
  if (claim.submitted_by !== null && claim.submitted_by === userId()) {
    throw new KeelError("denied", "nobody decides on their own claim");
  }
  return claim;
}

function approve(textId) {
  const claim = decidable(textId);
  const settings = get("settings", "accounts") ?? DEFAULT_SETTINGS;
  const line = (account, debit) => ({
    account,
    debit: debit ? claim.amount : undefined,
    credit: debit ? undefined : claim.amount,
    currency: undefined,
    rate: undefined,
    party: claim.employee === null ? undefined : BigInt(claim.employee),
    memo: undefined,
    dimensions: [],
  });
  const entry = {
    date: claim.date,
    memo: `Expense claim ${claim.id}: ${claim.description}`,
    lines: [line(settings.expense_account, true), line(settings.payable_account, false)],
    document: `claim-${claim.id}`,
  };
  claim.entry = Number(ledger.post(entry, `claim-${claim.id}-approval`));
  claim.status = "approved";
  claim.decided_by = userId();
  put("claims", key(claim.id), claim);
  return respond(200, claim);
}

function reject(textId, request) {
  const claim = decidable(textId);
  const body = request.body.length ? parseBody(request) : {};
  if (body.reason !== undefined && body.reason !== null && typeof body.reason !== "string") {
    throw invalid([["reason", "is text"]]);
  }
  claim.status = "rejected";
  claim.decided_by = userId();
  claim.reason = body.reason ?? null;
  put("claims", key(claim.id), claim);
  return respond(200, claim);
}

function route(request) {
  const parts = request.path.replace(/^\/+|\/+$/g, "").split("/");
  const method = request.method;
  const notAllowed = () => respond(405, { status: 405, detail: `${method} is not allowed` });
  if (parts.length === 1 && parts[0] === "claims") {
    if (method === "POST") return submit(request);
    if (method === "GET") return respond(200, { claims: allClaims() });
    return notAllowed();
  }
  if (parts.length === 2 && parts[0] === "claims") {
    return method === "GET" ? respond(200, load(parts[1])) : notAllowed();
  }
  if (parts.length === 3 && parts[0] === "claims" && (parts[2] === "approve" || parts[2] === "reject")) {
    if (method !== "POST") return notAllowed();
    return parts[2] === "approve" ? approve(parts[1]) : reject(parts[1], request);
  }
  return respond(404, { status: 404, detail: `no route for ${method} ${request.path}` });
}

export function manifest() {
  return {
    name: "expenses",
    version: VERSION,
    description: "Expense claims: submit, approve into the ledger, reject",
    capabilities: ["storage", "ledger:post"],
    subscriptions: [],
  };
}

export function migrate(fromVersion) {
  if (fromVersion === undefined) put("settings", "accounts", DEFAULT_SETTINGS);
}

export function handleHttp(request) {
  try {
    return route(request);
  } catch (error) {
    // Our own errors and refused host calls both carry the error variant as their payload.
    if (error && error.payload && error.payload.tag) return problem(error.payload);
    throw error;
  }
}

export function onEvent(_event) {}

export function invoke(operation, _input) {
  if (operation !== "summary") throw new KeelError("not-found", `no operation "${operation}"`);
  const summary = {};
  for (const claim of allClaims()) {
    const entry = (summary[claim.status] ??= { count: 0, total: "0" });
    entry.count += 1;
    entry.total = fromUnits(toUnits(entry.total) + toUnits(claim.amount));
  }
  return JSON.stringify(summary);
}
