"""What every front door is built with."""

from __future__ import annotations

from supervisor import Supervisor

from .conversation.manager import Conversations
from .options import FrontOptions
from .response import BodyLimits


class Door:
    """A front door's handlers share the supervisor, the conversations, the
    rendering options and the request body limits."""

    def __init__(
        self,
        supervisor: Supervisor,
        conversations: Conversations,
        options: FrontOptions,
        limits: BodyLimits,
    ) -> None:
        self.supervisor = supervisor
        self.conversations = conversations
        self.options = options
        self.limits = limits
