"""The school office's desk reader bridge: a PC/SC reader's cards to the staff API.

``python -m deskreader --reader "Virtual PCD 00 00" --desk office-1 --staff-url URL --token-file F``
watches one PC/SC reader (pcscd, through pyscard's ``smartcard.scard``), reads each card
presented with GET UID (``FF CA 00 00 00``) and posts the UID to the staff API's
``POST /desk-readers/{desk}/uid``, which completes the operation an officer started there
(docs/desk-reader.md).

Pure parts (no pyscard, no pcscd, no sockets): ``apdu`` (the command and its answer),
``supervisor`` (what to do after each PC/SC result: the state machine that outlives
reader unplugging and pcscd restarts), ``config``. The I/O: ``pcsc`` (the loop on
``SCardGetStatusChange``), ``staff`` (HTTP), ``bridge`` (both together). pyscard is not a
dependency of ecard: ``python -m deskreader.install`` (``make deskreader-deps``) installs it.
"""
