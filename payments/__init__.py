"""Bank-card top-ups: the acquirer interface and its local sandbox, ecard's webhook
and top-up endpoints, and the auto top-up worker. See docs/payments.md.

Money never moves here: a captured payment becomes a ``bank_topup`` command and a
refund a ``bank_refund`` command (storage.commands), applied by the gateway.
"""
