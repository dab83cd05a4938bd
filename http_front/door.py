"""What every front door is built with."""

from __future__ import annotations

from supervisor import Supervisor

from .conversation.manager import Conversations
from .options import FrontOptions
from .response import BodyLimits
from .tool_park import ToolPark


class Door:
    """A front door's handlers share the supervisor, the conversations, the
    rendering options, the request body limits and the tool park."""

    def __init__(
        self,
        supervisor: Supervisor,
        conversations: Conversations,
        options: FrontOptions,
        limits: BodyLimits,
        park: ToolPark | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.conversations = conversations
        self.options = options
        self.limits = limits
        self.park = park
        self._prepare()

    def _prepare(self) -> None:
        """A door's own state, made once it is built."""

    @property
    def client_tools(self) -> ToolPark | None:
        """Where turns wait on the client's function calls, if the client's
        tools go to codex (``client_tools = "auto"``)."""
        return self.park if self.options.client_tools else None
