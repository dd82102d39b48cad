"""The outbox relay: a process of its own that publishes the outbox to MQTT (QoS 1).

``python -m relay run`` reads the gateway's outbox rows in id order, publishes each to
``ecard/v1/events/<school_id>/<kind>/<account_id>`` and marks the ones the broker
acknowledged. ``python -m relay broker`` runs the embedded amqtt broker of `make run`;
``python -m relay mosquitto-files`` writes a Mosquitto configuration with its password
and ACL files. See docs/notices.md.

Imports storage and ledger (codes, notices); never gateway, staff_api or payments.
"""
