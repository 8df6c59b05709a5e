"""Stand-ins for Prometheus and the Pushgateway, and Argo Rollouts' condition evaluation.

The Prometheus stand-in answers the HTTP API (``/api/v1/query``, ``/api/v1/query_range``) with an empty
result for every query and records the queries: no cluster metrics exist here. An analysis that reads
Prometheus must therefore come out *inconclusive* (or failed), never successful; the rehearsal checks
that. The Pushgateway stand-in keeps what is pushed (``/metrics/job/<job>{/<label>/<value>}``), so a
job's metrics are seen arriving.

:func:`evaluate_metric` applies Argo Rollouts' rules (``utils/evaluate`` and ``analysis/analysis.go``):
a measurement is Successful, Failed, Inconclusive or Error from ``successCondition``/``failureCondition``
evaluated on ``result`` (a Prometheus vector becomes a list of floats, empty when there are no samples);
an expression error (``result[0]`` of an empty list) is an Error measurement. The expressions are
expr-lang's; :class:`Expr` evaluates the subset analysis conditions use (literals, ``result``,
indexing, ``len``/``isNaN``/``isInf``/``asInt``/``asFloat``/``isNil``/``all``/``any``/``none`` with ``#``
closures, ``!``/``not``, ``&&``/``and``, ``||``/``or``, comparisons, arithmetic) and refuses the rest with
a message rather than guessing.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse


class ExprError(Exception):
    """An expression that does not compile or fails at run time (Argo: an Error measurement)."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<op>\|\||&&|==|!=|<=|>=|\*\*|[-+*/%<>!(),\[\]{}#.])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
_BINARY = {
    "||": 1, "or": 1,
    "&&": 2, "and": 2,
    "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3, "in": 3,
    "+": 4, "-": 4,
    "*": 5, "/": 5, "%": 5,
    "**": 6,
}  # fmt: skip


class Expr:
    """A compiled expr-lang condition (the subset described in the module docstring)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = self._lex(source)
        self.pos = 0
        try:
            self.tree = self._expr(0)
        except IndexError as exc:
            raise ExprError(f"unexpected end of expression {source!r}") from exc
        if self.pos != len(self.tokens):
            raise ExprError(f"unexpected {self.tokens[self.pos][1]!r} in {source!r}")

    @staticmethod
    def _lex(source: str) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        pos = 0
        source = source.strip()
        while pos < len(source):
            m = _TOKEN.match(source, pos)
            if not m or m.end() == pos:
                raise ExprError(f"cannot read {source[pos:]!r} in {source!r}")
            pos = m.end()
            if m["num"]:
                out.append(("num", float(m["num"])))
            elif m["str"]:
                out.append(("str", json.loads('"' + m["str"][1:-1].replace('"', '\\"') + '"')))
            elif m["op"]:
                out.append(("op", m["op"]))
            elif m["name"]:
                out.append(("name", m["name"]))
        return out

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, value: str | None = None) -> tuple[str, Any]:
        tok = self.tokens[self.pos]
        if value is not None and tok[1] != value:
            raise ExprError(f"expected {value!r}, got {tok[1]!r} in {self.source!r}")
        self.pos += 1
        return tok

    def _expr(self, min_prec: int) -> Any:
        left = self._unary()
        while True:
            tok = self._peek()
            op = tok[1] if tok and tok[0] in ("op", "name") else None
            if op not in _BINARY or _BINARY[op] < min_prec:
                return left
            self._take()
            right = self._expr(_BINARY[op] + (0 if op == "**" else 1))
            left = ("bin", op, left, right)

    def _unary(self) -> Any:
        tok = self._peek()
        if tok and tok[1] in ("!", "not", "-", "+"):
            self._take()
            return ("un", tok[1], self._unary())
        return self._postfix(self._primary())

    def _primary(self) -> Any:
        kind, value = self._take()
        if kind in ("num", "str"):
            return ("lit", value)
        if kind == "op" and value == "(":
            inner = self._expr(0)
            self._take(")")
            return inner
        if kind == "op" and value == "#":
            return ("pointer",)
        if kind == "op" and value == "{":
            body = self._expr(0)
            self._take("}")
            return ("closure", body)
        if kind == "name":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "nil":
                return ("lit", None)
            return ("var", value)
        raise ExprError(f"unexpected {value!r} in {self.source!r}")

    def _postfix(self, node: Any) -> Any:
        while True:
            tok = self._peek()
            if tok == ("op", "("):
                self._take()
                args = []
                while self._peek() != ("op", ")"):
                    args.append(self._expr(0))
                    if self._peek() == ("op", ","):
                        self._take()
                self._take(")")
                node = ("call", node, args)
            elif tok == ("op", "["):
                self._take()
                index = self._expr(0)
                self._take("]")
                node = ("index", node, index)
            else:
                return node

    def __call__(self, env: dict[str, Any]) -> Any:
        return self._eval(self.tree, env, None)

    def _eval(self, node: Any, env: dict[str, Any], pointer: Any) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "pointer":
            return pointer
        if kind == "var":
            if node[1] not in env:
                raise ExprError(f"unknown name {node[1]!r} in {self.source!r}")
            return env[node[1]]
        if kind == "un":
            v = self._eval(node[2], env, pointer)
            return (not v) if node[1] in ("!", "not") else (-v if node[1] == "-" else v)
        if kind == "index":
            seq, idx = self._eval(node[1], env, pointer), self._eval(node[2], env, pointer)
            try:
                return seq[int(idx)]
            except (IndexError, TypeError) as exc:
                raise ExprError(
                    f"index out of range: {int(idx)} (array length {len(seq) if seq is not None else 0})"
                ) from exc
        if kind == "call":
            fname = node[1][1] if node[1][0] == "var" else None
            if fname in ("all", "any", "none", "filter", "map", "count"):
                seq = self._eval(node[2][0], env, pointer)
                body = node[2][1][1] if node[2][1][0] == "closure" else node[2][1]
                vals = [self._eval(body, env, x) for x in seq or []]
                return {
                    "all": lambda: all(vals), "any": lambda: any(vals), "none": lambda: not any(vals),
                    "filter": lambda: [x for x, v in zip(seq, vals, strict=True) if v], "map": lambda: vals,
                    "count": lambda: sum(1 for v in vals if v),
                }[fname]()  # fmt: skip
            fn = self._eval(node[1], env, pointer)
            return fn(*[self._eval(a, env, pointer) for a in node[2]])
        if kind == "bin":
            op = node[1]
            if op in ("||", "or"):
                return bool(self._eval(node[2], env, pointer)) or bool(self._eval(node[3], env, pointer))
            if op in ("&&", "and"):
                return bool(self._eval(node[2], env, pointer)) and bool(self._eval(node[3], env, pointer))
            a, b = self._eval(node[2], env, pointer), self._eval(node[3], env, pointer)
            try:
                return _binop(op, a, b)
            except TypeError as exc:
                raise ExprError(f"invalid operation {a!r} {op} {b!r} in {self.source!r}") from exc
        raise ExprError(f"cannot evaluate {node!r}")


def _binop(op: str, a: Any, b: Any) -> Any:
    if op == "/":
        return a / b if b else (math.copysign(math.inf, a) if a else math.nan)
    return {
        "==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b, "<=": lambda: a <= b,
        ">": lambda: a > b, ">=": lambda: a >= b, "in": lambda: a in b, "+": lambda: a + b,
        "-": lambda: a - b, "*": lambda: a * b, "%": lambda: a % b, "**": lambda: a**b,
    }[op]()  # fmt: skip


def _as_int(x: Any) -> int:
    return int(float(x))


def condition_env(result: Any) -> dict[str, Any]:
    """The names Argo gives a condition (``utils/evaluate.EvalCondition``)."""
    return {
        "result": result,
        "len": lambda x: len(x) if x is not None else 0,
        "isNaN": lambda x: isinstance(x, float) and math.isnan(x),
        "isInf": lambda x: isinstance(x, float) and math.isinf(x),
        "asInt": _as_int,
        "asFloat": float,
        "isNil": lambda *a: (a[0] if a else result) is None,
        "default": lambda *a: (
            a[-1] if (a[0] if len(a) > 1 else result) in (None, []) else (a[0] if len(a) > 1 else result)
        ),
    }


def evaluate_measurement(metric: dict[str, Any], result: Any) -> tuple[str, str]:
    """(phase, message) of one measurement: Successful | Failed | Inconclusive | Error."""
    success, failure = metric.get("successCondition", ""), metric.get("failureCondition", "")
    env = condition_env(result)
    values = {}
    for name, cond in (("successCondition", success), ("failureCondition", failure)):
        if not cond:
            continue
        try:
            out = Expr(cond)(env)
        except ExprError as exc:
            empty = result is None or (isinstance(result, list) and not result)
            why = (
                "metric result is nil or empty: no data returned from the metric provider"
                if empty
                else str(exc)
            )
            return "Error", f'could not evaluate {name} "{cond}": {why}'
        if not isinstance(out, bool):
            return "Error", f'{name} "{cond}": expected bool, but got {type(out).__name__}'
        values[name] = out
    if not success and not failure:
        return "Successful", ""
    ok = values.get("successCondition", not values.get("failureCondition", False))
    bad = values.get("failureCondition", not values.get("successCondition", False))
    if bad:
        return "Failed", f"result {result!r}"
    if not ok:
        return "Inconclusive", f"result {result!r}: neither successCondition nor failureCondition holds"
    return "Successful", f"result {result!r}"


def assess_metric(metric: dict[str, Any], phases: list[str]) -> str:
    """A metric's phase from its measurements so far (``assessMetricStatus`` without dry-run options)."""
    failed, inconclusive = phases.count("Failed"), phases.count("Inconclusive")
    consecutive_errors = 0
    for p in reversed(phases):
        if p != "Error":
            break
        consecutive_errors += 1
    phase = ""
    if failed > int(metric.get("failureLimit", 0)) >= 0:
        phase = "Failed"
    if inconclusive > int(metric.get("inconclusiveLimit", 0)):
        phase = "Inconclusive"
    if consecutive_errors > int(metric.get("consecutiveErrorLimit", 4)):
        phase = "Error"
    if phase:
        return phase
    count = metric.get("count")
    if count is not None and len(phases) >= int(count):
        return "Successful"
    if count is None and "interval" not in metric:
        return "Successful" if phases else "Pending"
    return "Running"


ORDER = ["Successful", "Running", "Pending", "Inconclusive", "Error", "Failed"]


def worst(phases: list[str]) -> str:
    """An AnalysisRun's phase from its metrics' phases (the worst completed one)."""
    return max(phases, key=ORDER.index) if phases else "Successful"


@dataclass
class PromQuery:
    query: str
    path: str
    client: str


@dataclass
class StandIns:
    """The Prometheus and Pushgateway stand-ins of one rehearsal."""

    queries: list[PromQuery] = field(default_factory=list)
    pushes: dict[str, str] = field(default_factory=dict)  # grouping path -> last body
    lock: threading.Lock = field(default_factory=threading.Lock)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)

    def serve_prometheus(self, host: str, port: int) -> None:
        stand = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, params: dict[str, list[str]]) -> None:
                url = urlparse(self.path)
                query = (params.get("query") or [""])[0]
                with stand.lock:
                    stand.queries.append(PromQuery(query, url.path, self.client_address[0]))
                if url.path in ("/api/v1/query", "/api/v1/query_range"):
                    kind = "matrix" if url.path.endswith("range") else "vector"
                    body = {"status": "success", "data": {"resultType": kind, "result": []}}
                    code = 200
                elif url.path in ("/-/ready", "/-/healthy"):
                    code, body = 200, {"status": "success"}
                else:
                    code, body = 404, {"status": "error", "errorType": "not_found", "error": url.path}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer(parse_qs(urlparse(self.path).query))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode()) if length else {}
                self._answer({**parse_qs(urlparse(self.path).query), **form})

        self._start(host, port, Handler)

    def serve_pushgateway(self, host: str, port: int) -> None:
        stand = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _push(self) -> None:
                path = unquote(urlparse(self.path).path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode(errors="replace") if length else ""
                if not path.startswith("/metrics/job/"):
                    self.send_response(404)
                    self.end_headers()
                    return
                with stand.lock:
                    if self.command == "DELETE":
                        stand.pushes.pop(path, None)
                    else:
                        stand.pushes[path] = body
                self.send_response(200 if self.command != "DELETE" else 202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = do_DELETE = _push

            def do_GET(self) -> None:
                with stand.lock:
                    data = "\n".join(stand.pushes.values()).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._start(host, port, Handler)

    def _start(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        httpd = ThreadingHTTPServer((host, port), handler)
        httpd.daemon_threads = True
        self._servers.append(httpd)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()


def prometheus_result(address: str, query: str, timeout_s: float = 10.0) -> list[float]:
    """Run a query against a Prometheus HTTP API (as Argo's provider does) → list of sample values."""
    import requests

    r = requests.get(f"{address.rstrip('/')}/api/v1/query", params={"query": query}, timeout=timeout_s)
    r.raise_for_status()
    data = r.json()["data"]
    if data["resultType"] == "scalar":
        return [float(data["result"][1])]
    out = []
    for series in data["result"]:
        for _, v in series.get("values") or [series.get("value")]:
            out.append(float(v))
    return out
