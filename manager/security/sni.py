"""The server name a TLS client asks for, read from its ClientHello (RFC 8446 4.1.2, RFC 6066
section 3) without terminating TLS: the manager's port uses it to route a connection.

Only the first record is read; a ClientHello that does not fit in it (never seen from
gRPC's BoringSSL) is treated as naming nothing.
"""

from __future__ import annotations

HANDSHAKE = 0x16
CLIENT_HELLO = 0x01
SERVER_NAME_EXT = 0x0000
MAX_RECORD = 16384 + 2048  # TLSPlaintext limit, with room for what some clients send


class NotTLS(Exception):
    """The peer did not open with a TLS handshake record."""


def first_record(data: bytes | bytearray) -> bytes | None:
    """The first TLS record in `data` once all of it is there (None: not yet); NotTLS if
    the peer did not open with a handshake record."""
    if not data:
        return None
    if data[0] != HANDSHAKE:
        raise NotTLS(f"not a TLS handshake (first byte {data[0]:#04x})")
    if len(data) < 5:
        return None
    length = int.from_bytes(data[3:5], "big")
    if length > MAX_RECORD:
        raise NotTLS(f"TLS record too long ({length} bytes)")
    return bytes(data[:5 + length]) if len(data) >= 5 + length else None


def server_name(record: bytes) -> str | None:
    """The host name in a ClientHello record's server_name extension; None if absent."""
    try:
        return _server_name(memoryview(record))
    except (IndexError, UnicodeDecodeError, ValueError):
        return None


def _server_name(data: memoryview) -> str | None:
    if data[0] != HANDSHAKE or data[5] != CLIENT_HELLO:
        return None
    end = min(len(data), 9 + int.from_bytes(data[6:9], "big"))
    pos = 9 + 2 + 32  # handshake header, legacy_version, random
    pos += 1 + data[pos]  # legacy_session_id
    pos += 2 + int.from_bytes(data[pos:pos + 2], "big")  # cipher_suites
    pos += 1 + data[pos]  # legacy_compression_methods
    ext_end = min(end, pos + 2 + int.from_bytes(data[pos:pos + 2], "big"))
    pos += 2
    while pos + 4 <= ext_end:
        kind = int.from_bytes(data[pos:pos + 2], "big")
        size = int.from_bytes(data[pos + 2:pos + 4], "big")
        pos += 4
        if kind == SERVER_NAME_EXT:
            # server_name_list: length(2), then entries of type(1) length(2) name
            lpos, lend = pos + 2, pos + 2 + int.from_bytes(data[pos:pos + 2], "big")
            while lpos + 3 <= lend:
                name_type = data[lpos]
                name_len = int.from_bytes(data[lpos + 1:lpos + 3], "big")
                if name_type == 0:
                    return bytes(data[lpos + 3:lpos + 3 + name_len]).decode("ascii")
                lpos += 3 + name_len
            return None
        pos += size
    return None
