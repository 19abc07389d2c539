"""A local Jira REST API v2 (the endpoints spendwatch uses), for tests and benchmarks.

``deployment`` picks the shape the ``jira`` client keys on: ``"Server"`` serves
``/rest/api/2/search``; ``"Cloud"`` serves ``/rest/api/2/search/jql`` and answers 410 on
the old endpoint, as Jira Cloud does. JQL is parsed for real (quoted strings with
backslash escapes, ``AND``, ``=``/``!=``, ``ORDER BY``): an unescaped quote is a 400.
"""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

from spendwatch.testing.fake_http import FakeServer, Request, Response, echo_line, echo_text

API = "/rest/api/2/"
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<op>!=|=)|(?P<word>[A-Za-z0-9_.@-]+))')
TRANSITIONS = [
    {"id": "21", "name": "In Progress", "to": {"name": "In Progress", "category": "indeterminate"}},
    {"id": "31", "name": "Done", "to": {"name": "Done", "category": "done"}},
]


class JqlError(ValueError):
    pass


def parse_jql(jql: str) -> list[tuple[str, str, str]]:
    """``a = "x" AND b != y ORDER BY c`` → ``[("a", "=", "x"), ("b", "!=", "y")]``."""
    tokens: list[tuple[str, str]] = []
    position = 0
    text = jql.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise JqlError(f"Error in the JQL Query: unexpected text at character {position}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
        position = match.end()
    clauses: list[tuple[str, str, str]] = []
    index = 0
    while index < len(tokens):
        if tokens[index] == ("word", "ORDER") or tokens[index][1].upper() == "ORDER":
            break
        if clauses:
            if tokens[index][1].upper() != "AND":
                raise JqlError("Error in the JQL Query: expected AND")
            index += 1
        try:
            (fkind, field), (okind, op), (vkind, value) = tokens[index : index + 3]
        except ValueError:
            raise JqlError("Error in the JQL Query: incomplete clause") from None
        if fkind != "word" or okind != "op" or vkind not in ("str", "word"):
            raise JqlError("Error in the JQL Query: expected field operator value")
        clauses.append((field, op, value))
        index += 3
    return clauses


class FakeJira(FakeServer):
    """Issues, comments and transitions of one project; accepts one token."""

    def __init__(
        self,
        token: str = "jira-test-token",
        project: str = "FIN",
        deployment: str = "Server",
        users: tuple[str, ...] = ("alice", "557058:alice"),
    ) -> None:
        super().__init__()
        self.token = token
        self.project = project
        self.deployment = deployment
        self.users = set(users)
        self.issues: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(10001)

    def endpoint_of(self, method: str, path: str) -> str:
        name = path[len(API) :] if path.startswith(API) else path
        name = re.sub(r"issue/[A-Z]+-\d+", "issue/KEY", name)
        return f"{method} {name}"

    def error_body(self, status: int) -> Any:
        return {"errorMessages": [f"HTTP {status}"], "errors": {}}

    def echo_body(self, status: int, request: Request, plain: bool) -> Any:
        if plain:
            return echo_text(status, request)
        errors = {"request": echo_line(request), "headers": str(request.headers)}
        return {"errorMessages": [], "errors": errors}

    # -- inspection -----------------------------------------------------------------------------

    def comments(self, key: str) -> list[str]:
        return [c["body"] for c in self.issues[key]["comments"]]

    # -- API ------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if not self._authorised(request.headers.get("authorization", "")):
            return Response(401, {"errorMessages": ["You are not authenticated."], "errors": {}})
        if not request.path.startswith(API):
            return Response(404, {"errorMessages": ["not found"]})
        path = request.path[len(API) :].rstrip("/")
        method = request.method
        if method == "GET" and path == "serverInfo":
            return Response(200, self._server_info())
        if method == "GET" and path == "field":
            return Response(200, _FIELDS)
        if path == "search":
            if self.deployment == "Cloud":
                return Response(410, {"errorMessages": ["The requested API has been removed."]})
            return self._search({**request.query, **request.body})
        if path == "search/jql":
            if self.deployment != "Cloud":
                return Response(404, {"errorMessages": ["not found"]})
            return self._search({**request.query, **request.body})
        if method == "POST" and path == "issue":
            return self._create(request.body)
        match = re.fullmatch(r"issue/([A-Z]+-\d+)(?:/(comment|transitions))?", path)
        if match is None or match.group(1) not in self.issues:
            return Response(404, {"errorMessages": ["Issue does not exist"], "errors": {}})
        issue = self.issues[match.group(1)]
        sub = match.group(2)
        if sub is None and method == "GET":
            return Response(200, self._issue_json(issue))
        if sub == "comment" and method == "GET":
            comments = issue["comments"]
            return Response(
                200,
                {"comments": comments, "startAt": 0, "maxResults": 1000, "total": len(comments)},
            )
        if sub == "comment" and method == "POST":
            comment = {
                "id": str(next(self._ids)),
                "body": request.body.get("body", ""),
                "author": {"name": "spendwatch"},
            }
            issue["comments"].append(comment)
            return Response(201, comment)
        if sub == "transitions" and method == "GET":
            return Response(200, {"expand": "transitions", "transitions": TRANSITIONS})
        if sub == "transitions" and method == "POST":
            wanted = str((request.body.get("transition") or {}).get("id"))
            target = next((t for t in TRANSITIONS if t["id"] == wanted), None)
            if target is None:
                return Response(400, {"errorMessages": ["Transition id is not valid"]})
            issue["fields"]["status"] = _status(target["to"]["name"], target["to"]["category"])
            return Response(204, None)
        return Response(405, {"errorMessages": ["method not allowed"]})

    def _authorised(self, header: str) -> bool:
        if header == f"Bearer {self.token}":
            return True
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:]).decode()
            except ValueError:
                return False
            return decoded.split(":", 1)[-1] == self.token
        return False

    def _server_info(self) -> dict[str, Any]:
        return {
            "baseUrl": self.url,
            "version": "9.12.2" if self.deployment != "Cloud" else "1001.0.0-SNAPSHOT",
            "versionNumbers": [9, 12, 2] if self.deployment != "Cloud" else [1001, 0, 0],
            "deploymentType": self.deployment,
            "buildNumber": 9120002,
            "serverTitle": "Fake Jira",
        }

    def _search(self, args: dict[str, Any]) -> Response:
        try:
            clauses = parse_jql(str(args.get("jql", "")))
        except JqlError as error:
            return Response(400, {"errorMessages": [str(error)], "errors": {}})
        found = [i for i in self.issues.values() if all(_holds(i, *c) for c in clauses)]
        limit = int(args.get("maxResults") or 50)
        issues = [self._issue_json(i) for i in found[:limit]]
        if self.deployment == "Cloud":
            return Response(200, {"issues": issues, "isLast": True})
        return Response(
            200, {"startAt": 0, "maxResults": limit, "total": len(found), "issues": issues}
        )

    def _create(self, body: dict[str, Any]) -> Response:
        fields = body.get("fields") or {}
        errors: dict[str, str] = {}
        if (fields.get("project") or {}).get("key") != self.project:
            errors["project"] = "valid project is required"
        if not fields.get("summary"):
            errors["summary"] = "You must specify a summary of the issue."
        if not (fields.get("issuetype") or {}).get("name"):
            errors["issuetype"] = "valid issue type is required"
        assignee = fields.get("assignee")
        if assignee is not None:
            who = assignee.get("accountId") or assignee.get("name")
            if who not in self.users:
                errors["assignee"] = f"User '{who}' does not exist."
        if errors:
            return Response(400, {"errorMessages": [], "errors": errors})
        number = len(self.issues) + 1
        key = f"{self.project}-{number}"
        issue_id = str(next(self._ids))
        self.issues[key] = {
            "id": issue_id,
            "key": key,
            "fields": {
                **fields,
                "labels": list(fields.get("labels") or []),
                "status": _status("To Do", "new"),
            },
            "comments": [],
        }
        return Response(201, {"id": issue_id, "key": key, "self": f"{self.url}{API}issue/{key}"})

    def _issue_json(self, issue: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": issue["id"],
            "key": issue["key"],
            "self": f"{self.url}{API}issue/{issue['key']}",
            "fields": issue["fields"],
        }


def _status(name: str, category: str) -> dict[str, Any]:
    return {"name": name, "statusCategory": {"key": category, "name": name}}


def _holds(issue: dict[str, Any], field: str, op: str, value: str) -> bool:
    fields = issue["fields"]
    name = field.lower()
    if name == "project":
        actual: list[str] = [issue["key"].split("-")[0]]
    elif name == "labels":
        actual = list(fields.get("labels") or [])
    elif name == "statuscategory":
        category = fields["status"]["statusCategory"]["key"]
        actual = ["Done"] if category == "done" else ["To Do" if category == "new" else "Doing"]
    elif name == "status":
        actual = [fields["status"]["name"]]
    else:
        return False
    contained = value in actual
    return contained if op == "=" else not contained


_FIELDS = [
    {"id": "summary", "name": "Summary", "clauseNames": ["summary"]},
    {"id": "labels", "name": "Labels", "clauseNames": ["labels"]},
    {"id": "status", "name": "Status", "clauseNames": ["status"]},
    {"id": "description", "name": "Description", "clauseNames": ["description"]},
]
