"""Every limit of protocol v1, each with its reason. docs/protocol.md lists the same."""

from __future__ import annotations

PROTOCOL_VERSION = 1
START_BYTE = 0xEC

HEADER_BYTES = 14  # start, version, flags, length u16, device id u32, seq u32, type
CRC_BYTES = 2

# The largest legitimate frame is a PURCHASE of ITEMS_MAX items:
# 14 header + 23 fixed payload + 16 identifier + 64 * 10 items + 2 CRC = 695 bytes.
# 1024 leaves room for v1 extensions and stays well under one Ethernet MTU, so a
# frame never needs more than one TCP segment on a quiet link (OSDP caps its
# packets at a similar size for the same reason).
FRAME_BYTES_MAX = 1024
PAYLOAD_BYTES_MAX = FRAME_BYTES_MAX - HEADER_BYTES - CRC_BYTES

# A school tray never holds more than a handful of dishes; 64 covers a buffet
# basket bought for a whole group and keeps the frame under FRAME_BYTES_MAX.
ITEMS_MAX = 64

# ISO 14443 UIDs are 4, 7 or 10 bytes; the Social Card number (19 digits) fits
# in 10 bytes of packed BCD. 16 leaves room for longer issuer formats.
IDENTIFIER_BYTES_MIN = 4
IDENTIFIER_BYTES_MAX = 16

# Firmware strings are version labels ("turnstile-2.4.1"); 32 bytes is plenty
# and bounds what a device can make the gateway log.
FIRMWARE_BYTES_MAX = 32

# A NAK's human-readable detail is for logs and technicians, not parsing.
NAK_DETAIL_BYTES_MAX = 64

# DECISION carries a display template id plus a few numeric parameters
# (amount, balance, limit); the templates never need more than four.
DISPLAY_PARAMS_MAX = 4

# PUPIL_INFO: a photo reference is a key into the school's photo store (a path
# or an id), not the photo; a cashier note is a sentence or two from a parent.
PHOTO_REF_BYTES_MAX = 64
CASHIER_NOTE_BYTES_MAX = 200
# A pupil's pre-ordered lines for one day: a meal or two per period.
PREORDER_LINES_MAX = 16

HELLO_NONCE_BYTES = 16
HELLO_MAC_BYTES = 16  # truncated HMAC-SHA256, as in many MAC-truncation profiles (RFC 2104 section 5)

# Secure channel (docs/protocol.md, section 5a).
# AES-128: the device key, the session keys and the CMAC block are 16 bytes.
DEVICE_KEY_BYTES = 16
# RND.B, the gateway's challenge in HELLO_ACK: 128 random bits never repeat by chance.
HELLO_RND_B_BYTES = 16
# The gateway's cryptogram in HELLO_ACK is a whole AES-CMAC (128 bits): it is sent once a
# session and is the device's only proof that the gateway holds its key.
HELLO_CRYPTOGRAM_BYTES = 16
# Every frame after HELLO_ACK ends with an 8-byte MAC (AES-CMAC truncated to 64 bits, as
# NIST SP 800-38B section 5.5 allows; OSDP sends 4 bytes). A forger succeeds with
# probability 2^-64 per try and gets at most MAC_FAILURES_MAX tries per session, so 64 bits
# are far beyond need at 8 bytes a frame.
FRAME_MAC_BYTES = 8
# LIST_PAGE: entries of at most 1 + 1 + IDENTIFIER_BYTES_MAX = 18 bytes after a 10-byte
# head; 48 of them (874 bytes) fit one frame with its MAC (1024 - 14 - 2 - 8 = 1000), so a
# 1,500-card school's snapshot is 32 frames.
LIST_PAGE_ENTRIES_MAX = 48
# ALLOWANCE_PAGE: entries of at most 1 + 4 + 1 + IDENTIFIER_BYTES_MAX = 22 bytes after a
# 15-byte head; 40 of them (895 bytes) fit one frame with its MAC (1000), and a till's first
# sync (a few hundred pupils per till) takes a dozen round trips.
ALLOWANCE_PAGE_ENTRIES_MAX = 40
# A CRC-valid frame whose MAC fails never happens by accident (TCP and the CRC catch line
# errors): it is a forged, replayed, reordered or foreign frame, or a wrong key. One or two
# may be a confused device; the third in one session ends it (the gateway closes, a device
# closes), so an attacker gets 3 tries per handshake and each handshake costs a fresh HELLO.
MAC_FAILURES_MAX = 3

# Money on the wire: amounts are u32 kopecks (up to 42,949,672.95 rubles, far
# above any school purchase); balances are i64 kopecks because they may go
# negative under a grace policy and are sums.
AMOUNT_KOPECKS_MAX = 0xFFFFFFFF

# Devices send one request and wait for its reply (like OSDP). A peer that has
# more than this many complete frames buffered is flooding, not retrying.
PENDING_FRAMES_MAX = 16

# Bytes buffered for a connection that do not yet form a frame, plus frames not
# yet consumed: PENDING_FRAMES_MAX full frames. Anything beyond is a flood.
RECEIVE_BUFFER_BYTES_MAX = PENDING_FRAMES_MAX * FRAME_BYTES_MAX

SEQ_MAX = 0xFFFFFFFF  # after SEQ_MAX the next sequence number is 1 (0 means "new session")
# Transaction numbers are stored as PostgreSQL bigint (signed 64-bit), so the
# top bit stays clear; 2^63-1 txns outlasts any device.
TXN_MAX = (1 << 63) - 1

# A device's txn may run ahead of the highest txn the gateway knows from it by at
# most this much (offline sales, skipped numbers). Without a bound, one txn near
# TXN_MAX would leave no room for any later txn: 2^32 jumps cannot reach TXN_MAX
# in any device's life, and no device makes 4 billion transactions offline.
TXN_GAP_MAX = 1 << 32
