"""Bank-card top-ups: the acquirer interface and its local sandbox (with its hosted payment
page and card tokens), ecard's webhook, the parents' top-up, saved-card and auto top-up
endpoints (bearer token), and the auto top-up worker. See docs/payments.md.

ecard never receives, stores or logs a card number: only the sandbox (standing in for the
bank's acquirer) does, on its own hosted page.

Money never moves here: a captured payment becomes a ``bank_topup`` command and a
refund a ``bank_refund`` command (storage.commands), applied by the gateway.
"""
