"""PostgreSQL storage of ecard: schema migrations, bulk snapshot loads, the group-commit journal.

Imports nothing from gateway/; the gateway builds its in-memory state from what
this package reads.
"""
