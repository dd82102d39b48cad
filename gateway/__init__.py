"""The ecard gateway: asyncio server, in-memory cache, pure authorizer, metrics."""
