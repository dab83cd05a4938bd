"""Conversation continuity: one codex thread per chat, found again by key."""
