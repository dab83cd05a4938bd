"""Typed client of one codex app-server, on top of :class:`JsonRpcPeer`."""

from __future__ import annotations

import enum
import logging
import math
import time
from typing import Any

import attrs
import trio

from .messages import JsonObject, Notification, ServerRequest, structure
from .peer import JsonRpcPeer, PeerClosed, RpcCallError, ServerRequestRefused
from .protocol import (
    CLIENT_TOOL_CALL,
    AccountReadResult,
    ClientInfo,
    InitializeParams,
    InitializeResult,
    InjectItemsParams,
    ModelInfo,
    ModelListResult,
    RateLimitWindow,
    ThreadResumeParams,
    ThreadRevertParams,
    ThreadStartParams,
    ThreadStartResult,
    TurnInterruptParams,
    TurnStartParams,
    TurnStartResult,
    parse_rate_limits,
    to_wire,
)

log = logging.getLogger(__name__)


@attrs.define
class _ToolCallSlot:
    thread_id: str
    done: trio.Event = attrs.Factory(trio.Event)
    result: JsonObject = attrs.Factory(dict)

    def answer(self, text: str, *, success: bool) -> None:
        self.result = {"contentItems": [{"type": "inputText", "text": text}], "success": success}
        self.done.set()


class ApprovalPolicy(enum.StrEnum):
    """How the bridge answers codex's approval requests.

    Nobody sits in front of an HTTP stream to click "approve", so the answer
    is decided by configuration. ``decline`` (the default) lets the turn go on
    without the action; ``accept`` runs it; ``cancel`` declines and ends the
    turn.
    """

    DECLINE = "decline"
    ACCEPT = "accept"
    CANCEL = "cancel"
    #: Accept commands codex classifies as only reading, listing or searching
    #: files; decline everything else (other commands, file changes).
    ACCEPT_READ_ONLY = "accept-read-only"


# The legacy (v1) approval methods use ReviewDecision values.
_LEGACY_DECISIONS = {"decline": "denied", "accept": "approved", "cancel": "abort"}
_READ_ONLY_ACTIONS = frozenset({"read", "listFiles", "search"})


def _decide(policy: ApprovalPolicy, request: ServerRequest) -> str:
    if policy is not ApprovalPolicy.ACCEPT_READ_ONLY:
        return policy.value
    actions = request.params.get("commandActions")
    if (
        request.method == "item/commandExecution/requestApproval"
        and isinstance(actions, list)
        and actions
        and all(isinstance(a, dict) and a.get("type") in _READ_ONLY_ACTIONS for a in actions)
    ):
        return "accept"
    return "decline"


_APPROVAL_METHODS = frozenset(
    {"item/commandExecution/requestApproval", "item/fileChange/requestApproval"}
)
_LEGACY_APPROVAL_METHODS = frozenset({"execCommandApproval", "applyPatchApproval"})


def approval_answer(policy: ApprovalPolicy, request: ServerRequest) -> JsonObject:
    """The reply to a server request under ``policy``.

    Raises :class:`ServerRequestRefused` for requests the bridge cannot
    answer meaningfully (user input, MCP elicitation, dynamic tools, token
    refresh); codex treats the error as a failed request and goes on.
    """
    if request.method in _APPROVAL_METHODS:
        return {"decision": _decide(policy, request)}
    if request.method in _LEGACY_APPROVAL_METHODS:
        return {"decision": _LEGACY_DECISIONS[_decide(policy, request)]}
    raise ServerRequestRefused(f"codex-bridge does not support {request.method}")


class CodexClient:
    """The codex app-server API over one peer.

    Every call raises :class:`~bridge.peer.RpcCallError` on an error reply,
    :class:`~bridge.peer.PeerClosed` if the child dies first, and
    :class:`trio.TooSlowError` past its timeout. Cancellation abandons the
    call (codex may still act on it).
    """

    def __init__(
        self,
        peer: JsonRpcPeer,
        *,
        approval_policy: ApprovalPolicy = ApprovalPolicy.DECLINE,
    ) -> None:
        self.peer = peer
        self.approval_policy = approval_policy
        #: The account's rate-limit windows as codex last reported them
        #: (``account/rateLimits/updated``, after each model response).
        self.rate_limits: tuple[RateLimitWindow, ...] = ()
        self.rate_limits_at = 0.0  # time.monotonic() of that report
        #: The client's function calls codex waits on, by call id.
        self._tool_calls: dict[str, _ToolCallSlot] = {}
        peer.on_server_request = self._answer_server_request
        peer.on_notification = self._on_notification
        peer.self_timed_methods = frozenset({CLIENT_TOOL_CALL})

    def _on_notification(self, notification: Notification) -> None:
        """Notifications of no thread with a sink: the account's rate limits
        are kept; the others carry nothing the bridge uses."""
        if notification.method == "account/rateLimits/updated":
            windows = parse_rate_limits(notification.params)
            if windows:
                self.rate_limits = windows
                self.rate_limits_at = time.monotonic()

    async def _answer_server_request(self, request: ServerRequest) -> Any:
        if request.method == CLIENT_TOOL_CALL:
            return await self._client_tool_call(request)
        answer = approval_answer(self.approval_policy, request)
        decision = str(answer["decision"])
        log.info("%s: answered %s with %s", self.peer.name, request.method, decision)
        # Tell the turn: its client should see that the bridge decided.
        params = request.params
        self.peer.deliver(
            Notification(
                "bridge/approval",
                {
                    "threadId": params.get("threadId"),
                    "turnId": params.get("turnId"),
                    "itemId": params.get("itemId"),
                    "command": params.get("command"),
                    "reason": params.get("reason"),
                    "method": request.method,
                    "decision": decision,
                    "policy": self.approval_policy.value,
                },
            )
        )
        return answer

    # -- the client's functions (dynamic tools) ---------------------------------

    async def _client_tool_call(self, request: ServerRequest) -> JsonObject:
        """Hand the call to its thread's turn and wait for the client's result.

        The wait has no bound here: the turn's owner answers it
        (:meth:`answer_tool_call`), gives up on it (:meth:`fail_tool_calls`),
        or the child goes away. codex's own timeouts are held off meanwhile
        with the thread's out-of-band elicitation counter.
        """
        params = request.params
        call_id, thread_id = params.get("callId"), params.get("threadId")
        if not isinstance(call_id, str) or not isinstance(thread_id, str):
            raise ServerRequestRefused(f"{CLIENT_TOOL_CALL} without callId or threadId")
        slot = _ToolCallSlot(thread_id)
        self._tool_calls[call_id] = slot
        try:
            await self._elicitation("thread/increment_elicitation", thread_id)
            self.peer.deliver(Notification(CLIENT_TOOL_CALL, params))
            await slot.done.wait()
            return slot.result
        finally:
            del self._tool_calls[call_id]
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._elicitation("thread/decrement_elicitation", thread_id)

    async def _elicitation(self, method: str, thread_id: str) -> None:
        try:
            await self.peer.request(method, {"threadId": thread_id}, timeout_s=10)
        except (RpcCallError, PeerClosed, trio.TooSlowError) as exc:
            log.debug("%s: %s for %s: %s", self.peer.name, method, thread_id, exc)

    def answer_tool_call(self, call_id: str, text: str, *, success: bool = True) -> bool:
        """Give codex the client's result of a call; False if none is waiting."""
        slot = self._tool_calls.get(call_id)
        if slot is None or slot.done.is_set():
            return False
        slot.answer(text, success=success)
        return True

    def fail_tool_calls(self, thread_id: str, reason: str) -> int:
        """Fail every call of ``thread_id`` still waiting; how many there were."""
        waiting = [
            slot
            for slot in self._tool_calls.values()
            if slot.thread_id == thread_id and not slot.done.is_set()
        ]
        for slot in waiting:
            slot.answer(reason, success=False)
        return len(waiting)

    async def _call(
        self, method: str, params: Any, result_type: type[Any], timeout_s: float
    ) -> Any:
        raw = await self.peer.request(
            method, to_wire(params) if params is not None else {}, timeout_s=timeout_s
        )
        return structure(raw, result_type)

    async def initialize(
        self, client_info: ClientInfo, *, timeout_s: float = math.inf
    ) -> InitializeResult:
        """``initialize`` then the ``initialized`` notification."""
        params = InitializeParams(client_info, {"experimentalApi": True})
        result: InitializeResult = await self._call(
            "initialize", params, InitializeResult, timeout_s
        )
        await self.peer.notify("initialized")
        return result

    async def account_read(self, *, timeout_s: float = math.inf) -> AccountReadResult:
        result: AccountReadResult = await self._call(
            "account/read", None, AccountReadResult, timeout_s
        )
        return result

    async def ping(self, *, timeout_s: float = math.inf) -> None:
        """The cheapest request codex answers: a liveness check.

        ``thread/loaded/list`` reads an in-memory table of the process; it
        touches neither the network nor the disk.
        """
        await self.peer.request("thread/loaded/list", {"limit": 1}, timeout_s=timeout_s)

    async def model_list(self, *, timeout_s: float = math.inf) -> list[ModelInfo]:
        """Every model, following ``nextCursor`` pages."""
        models: list[ModelInfo] = []
        cursor: str | None = None
        while True:
            params = {"cursor": cursor} if cursor else {}
            raw = await self.peer.request("model/list", params, timeout_s=timeout_s)
            page: ModelListResult = structure(raw, ModelListResult)
            models.extend(page.data)
            if not page.next_cursor or not page.data:
                return models
            cursor = page.next_cursor

    async def thread_start(
        self, params: ThreadStartParams, *, timeout_s: float = math.inf
    ) -> ThreadStartResult:
        result: ThreadStartResult = await self._call(
            "thread/start", params, ThreadStartResult, timeout_s
        )
        return result

    async def thread_resume(
        self, params: ThreadResumeParams, *, timeout_s: float = math.inf
    ) -> ThreadStartResult:
        result: ThreadStartResult = await self._call(
            "thread/resume", params, ThreadStartResult, timeout_s
        )
        return result

    async def thread_revert(
        self, params: ThreadRevertParams, *, timeout_s: float = math.inf
    ) -> None:
        await self.peer.request("thread/revert", to_wire(params), timeout_s=timeout_s)

    async def thread_inject_items(
        self, params: InjectItemsParams, *, timeout_s: float = math.inf
    ) -> None:
        await self.peer.request("thread/inject_items", to_wire(params), timeout_s=timeout_s)

    async def thread_unsubscribe(self, thread_id: str, *, timeout_s: float = math.inf) -> str:
        """Stop listening to a thread; codex unloads it once nobody listens
        (at once with ``thread_unload_delay_secs = 0``, then ``thread/closed``).

        Returns codex's status: ``unsubscribed``, or ``notLoaded`` for a
        thread that is not loaded (nothing to wait for).
        """
        result = await self.peer.request(
            "thread/unsubscribe", {"threadId": thread_id}, timeout_s=timeout_s
        )
        status = result.get("status") if isinstance(result, dict) else None
        return status if isinstance(status, str) else "unsubscribed"

    async def turn_start(
        self, params: TurnStartParams, *, timeout_s: float = math.inf
    ) -> TurnStartResult:
        result: TurnStartResult = await self._call("turn/start", params, TurnStartResult, timeout_s)
        return result

    async def turn_interrupt(
        self, params: TurnInterruptParams, *, timeout_s: float = math.inf
    ) -> None:
        await self.peer.request("turn/interrupt", to_wire(params), timeout_s=timeout_s)
