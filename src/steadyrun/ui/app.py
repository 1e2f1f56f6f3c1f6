"""The web application: routes, the token check, live streams and actions.

Every request needs the token printed with the URL: given once as ``?token=``, it is
kept in an HttpOnly, SameSite=Strict cookie. A request without it gets 403. Actions
(cancel, resume) are POST requests carrying a CSRF token derived from the token; with
``read_only`` they are neither shown nor accepted (403).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from steadyrun.errors import SteadyrunError
from steadyrun.ui import pages

COOKIE = "steadyrun_ui"
STATIC = Path(__file__).parent / "static"
#: Rows per page of the experiments list and of an experiment's task table.
PAGE = 50
FINAL = ("succeeded", "failed", "cancelled")


def new_token() -> str:
    """A random token for the URL (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def create_app(token: str, *, home: str | Path | None = None, read_only: bool = False,
               poll: float = 1.0) -> Starlette:
    """The dashboard of the store at ``home`` (default: ``$STEADYRUN_HOME``), opened
    read-only on every request; ``poll`` seconds between live updates."""
    csrf = hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()
    ctx = pages.Context(csrf=csrf, read_only=read_only)

    def store() -> Any:
        from steadyrun.store.db import Store

        return Store(home, readonly=True)

    async def page(fn: Callable[..., str], *args: Any) -> Response:
        def build() -> str:
            s = store()
            try:
                return fn(s, ctx, *args)
            finally:
                s.close()
        try:
            return HTMLResponse(await run_in_threadpool(build))
        except SteadyrunError as exc:
            return HTMLResponse(pages.error_page(str(exc)), status_code=404)

    async def experiments(request: Request) -> Response:
        q = request.query_params
        return await page(pages.experiments_page, q.get("state") or None,
                          q.get("title") or None, _int(q.get("page"), 1), PAGE)

    async def experiment(request: Request) -> Response:
        return await page(pages.experiment_page, request.path_params["exp"],
                          _int(request.query_params.get("page"), 1), PAGE)

    async def task(request: Request) -> Response:
        return await page(pages.task_page, request.path_params["exp"],
                          request.path_params["task"])

    async def sweep(request: Request) -> Response:
        q = request.query_params
        return await page(pages.sweep_page, request.path_params["exp"], q.get("sort"),
                          q.get("desc") == "1", q.get("metric"))

    async def states(request: Request) -> Response:
        """Server-sent events: the experiment's and its tasks' states, each time they
        change (the store is only read)."""
        exp = request.path_params["exp"]
        number = _int(request.query_params.get("page"), 1)

        async def stream() -> AsyncIterator[str]:
            last = ""
            while not await request.is_disconnected():
                snap = await run_in_threadpool(_snapshot, store, exp, number)
                data = json.dumps(snap, sort_keys=True)
                if data != last:
                    yield f"data: {data}\n\n"
                    last = data
                if snap.get("state") in FINAL and snap.get("settled"):
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(poll)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def logs(request: Request) -> Response:
        """Server-sent events: the task's latest attempt's output, following it live."""
        exp, name = request.path_params["exp"], request.path_params["task"]

        async def stream() -> AsyncIterator[str]:
            sent = 0
            while not await request.is_disconnected():
                text, done = await run_in_threadpool(_log_text, store, exp, name)
                if len(text) > sent:
                    yield "data: " + json.dumps(text[sent:]) + "\n\n"
                    sent = len(text)
                elif len(text) < sent:  # a new attempt: start over
                    yield "event: reset\ndata: " + json.dumps(text) + "\n\n"
                    sent = len(text)
                if done:
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(poll)
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def action(request: Request) -> Response:
        if read_only:
            return PlainTextResponse("read-only: actions are off", status_code=403)
        from urllib.parse import parse_qs

        raw = parse_qs((await request.body())[:65536].decode("utf-8", "replace"))
        form = {k: v[0] for k, v in raw.items()}
        if not hmac.compare_digest(str(form.get("csrf", "")), csrf):
            return PlainTextResponse("missing or wrong CSRF token", status_code=403)
        exp, what = request.path_params["exp"], request.path_params["action"]
        task_name = str(form.get("task") or "") or None
        try:
            message = await run_in_threadpool(_act, home, exp, what, task_name)
        except SteadyrunError as exc:
            message = f"{what} refused: {exc}"
        back = str(form.get("back") or f"/e/{exp}")
        if not back.startswith("/") or back[1:2] in ("/", "\\"):  # stay on this site
            back = f"/e/{exp}"
        from urllib.parse import quote

        sep = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{sep}msg={quote(message)}", status_code=303)

    routes = [
        Route("/", experiments),
        Route("/e/{exp}", experiment),
        Route("/e/{exp}/states", states),
        Route("/e/{exp}/sweep", sweep),
        Route("/e/{exp}/t/{task:path}/logs", logs),
        Route("/e/{exp}/t/{task:path}", task),
        Route("/e/{exp}/{action:str}", action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_TokenCheck, token=token)
    return app


class _TokenCheck:
    """Refuses (403) every request without the token; ``?token=`` sets the cookie and
    redirects to the same address without it (so it leaves the address bar)."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given, self.token):
            from urllib.parse import urlencode

            rest = urlencode([(k, v) for k, v in request.query_params.multi_items()
                              if k != "token"])
            target = request.url.path + ("?" + rest if rest else "")
            resp: Response = RedirectResponse(target, status_code=303)
            resp.set_cookie(_cookie(request), self.token, httponly=True, samesite="strict")
            await resp(scope, receive, send)
            return
        cookie = request.cookies.get(_cookie(request), "")
        if not hmac.compare_digest(cookie, self.token):
            resp = PlainTextResponse("403: open the address steadyrun ui printed (it carries "
                                     "the token)", status_code=403)
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _cookie(request: Request) -> str:
    """The cookie's name, one per port: two dashboards on one host keep their tokens."""
    return f"{COOKIE}_{request.url.port or 80}"


def _snapshot(open_store: Callable[[], Any], exp: str, page: int,
              size: int = PAGE) -> dict[str, Any]:
    """The experiment's state and one page of its tasks' states (what the page shows)."""
    from steadyrun.ui import data

    s = open_store()
    try:
        full = s.resolve_id(exp)
        row = s.experiment(full)
        shown = data.task_page(s, full, page, size)
        settled = data.open_count(s, full) == 0
    finally:
        s.close()
    tasks = {t.name: {"state": t.state, "attempts": t.attempts, "kind": t.kind or "",
                      "duration": pages.fmt_duration(t.duration), "host": t.host or ""}
             for t in shown}
    return {"state": row.state, "tasks": tasks, "settled": settled}


def _log_text(open_store: Callable[[], Any], exp: str, task: str,
              limit: int = 200_000) -> tuple[str, bool]:
    """The task's latest attempt's output (the last ``limit`` characters) and whether
    the task is final."""
    from steadyrun.observe.logs import iter_logs
    from steadyrun.ui import data

    s = open_store()
    try:
        full = s.resolve_id(exp)
        row = data.task_row(s, full, task)
        if row is None:
            return "", True
        done = row.state not in data.OPEN
        if not s.attempts(full, task):
            return "", done
        text = "".join(line + "\n" for line in iter_logs(s, full, task, tail=2000))
    finally:
        s.close()
    return text[-limit:], done


def _act(home: str | Path | None, exp: str, what: str, task: str | None) -> str:
    """Cancel or resume, through the functions ``steadyrun cancel``/``resume`` use."""
    from steadyrun.store.db import Store

    if what == "cancel":
        from steadyrun.manage import cancel

        s = Store(home)
        try:
            return cancel(s, s.resolve_id(exp), task, wait=10.0)
        finally:
            s.close()
    if what == "resume":
        from steadyrun.experiment import Experiment

        e = Experiment.from_id(exp, home=home)
        e.resume(detach=True)
        return f"resumed {e.id} in the background"
    raise SteadyrunError(f"unknown action {what!r}")


def _int(text: str | None, default: int) -> int:
    try:
        return max(1, int(text or default))
    except ValueError:
        return default


def now() -> float:
    return time.time()
