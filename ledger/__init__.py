"""The pure ledger state machine of ecard: state, rules, machine, records, codes.

Imports ``protocol`` and nothing that does I/O (an import-linter contract in
pyproject.toml keeps it so). The gateway is its asyncio shell; storage persists
its records.
"""
