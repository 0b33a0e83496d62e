"""The HTTP side: the Litestar app, its routes, the chat path, one ASGI exchange, the legacy /api/chat and the
server limits."""
