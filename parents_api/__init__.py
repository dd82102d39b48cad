"""The parents' API: one-time codes and tokens for the apps and the portal, the children's
balances, days and history (JSON), and the USSD *377*888# aggregator callback.

Reads and writes through ``storage.parents``; never imports the gateway. See
``docs/parents-api.md``.
"""

from .app import create_app
from .config import Settings
from .senders import FileSender, Senders, SmtpSender

__all__ = ["create_app", "Settings", "Senders", "FileSender", "SmtpSender"]
