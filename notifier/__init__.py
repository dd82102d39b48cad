"""The notifier: parents' notices from the MQTT event stream to e-mail and app push.

``python -m notifier`` takes the relay's events in (MQTT QoS 1, a shared subscription),
de-duplicates them durably by event id, records one delivery per (event, representative,
channel) and sends them with retries; see docs/notifier.md.

Imports storage, ledger (codes, notices), protocol (through the notices) and relay.layout
(the topic layout and message format); never gateway, staff_api or payments.
"""
