"""Protobuf messages assembled from serialized parts.

A protobuf message is the concatenation of its fields, in any order, and a repeated field
is its entries wherever they appear: so a message can be built by joining parts serialized
once and kept (the manager's NetworkState pushes, a node's merged view of them).
"""

from __future__ import annotations


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def wrap(number: int, data: bytes) -> bytes:
    """A length-delimited field (a message or a string) with its tag."""
    return varint(number << 3 | 2) + varint(len(data)) + data
