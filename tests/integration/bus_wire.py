#!/usr/bin/python3
# The D-Bus wire protocol as far as the test clients need it (little endian,
# EXTERNAL authentication, descriptors passed with SCM_RIGHTS), for calls
# busctl cannot make. A client is this file followed by its own main(), put
# together by the test that installs it (tests/integration/security.rs,
# machine.rs), so that the protocol is written once.
import os
import socket
import struct
import sys

PROGRAM = os.path.basename(sys.argv[0])


class Writer:
    def __init__(self):
        self.data = bytearray()

    def align(self, n):
        self.data += b"\0" * (-len(self.data) % n)

    def byte(self, value):
        self.data.append(value)

    def u32(self, value):
        self.align(4)
        self.data += struct.pack("<I", value)

    def string(self, value):
        encoded = value.encode()
        self.u32(len(encoded))
        self.data += encoded + b"\0"

    def signature(self, value):
        encoded = value.encode()
        self.byte(len(encoded))
        self.data += encoded + b"\0"


def message(serial, path, interface, member, destination, signature, body, fds):
    fields = Writer()
    for code, sig, value in [
        (1, "o", path),
        (2, "s", interface),
        (3, "s", member),
        (6, "s", destination),
        (8, "g", signature),
        (9, "u", fds),
    ]:
        if value is None or value == "" or (sig == "u" and value == 0):
            continue
        fields.align(8)
        fields.byte(code)
        fields.signature(sig)
        if sig == "g":
            fields.signature(value)
        elif sig == "u":
            fields.u32(value)
        else:
            fields.string(value)
    head = Writer()
    head.data += b"l" + bytes([1, 0, 1])
    head.u32(len(body))
    head.u32(serial)
    head.u32(len(fields.data))
    head.data += fields.data
    head.align(8)
    return bytes(head.data) + bytes(body)


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            sys.exit(PROGRAM + ": the bus closed the connection")
        data += chunk
    return data


def read_message(sock):
    fixed = read_exact(sock, 16)
    kind = fixed[1]
    body_len, _, fields_len = struct.unpack("<III", fixed[4:16])
    rest = read_exact(sock, fields_len + (-(16 + fields_len) % 8) + body_len)
    fields = rest[:fields_len]
    body = rest[len(rest) - body_len:] if body_len else b""
    found, at = {}, 0
    while at < fields_len:
        at += -at % 8
        code, sig_len = fields[at], fields[at + 1]
        sig = fields[at + 2:at + 2 + sig_len].decode()
        at += 3 + sig_len
        if sig == "u":
            at += -(16 + at) % 4
            found[code] = struct.unpack("<I", fields[at:at + 4])[0]
            at += 4
        elif sig in ("s", "o"):
            at += -(16 + at) % 4
            length = struct.unpack("<I", fields[at:at + 4])[0]
            found[code] = fields[at + 4:at + 4 + length].decode()
            at += 5 + length
        elif sig == "g":
            length = fields[at]
            found[code] = fields[at + 1:at + 1 + length].decode()
            at += 2 + length
        else:
            sys.exit(PROGRAM + ": unexpected header field type " + sig)
    return kind, found, body


def call(sock, serial, *args, fds=()):
    data = message(serial, *args, len(fds))
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i" * len(fds), *fds))])
    else:
        sock.sendall(data)
    while True:
        kind, fields, body = read_message(sock)
        if kind in (2, 3) and fields.get(5) == serial:
            return kind, fields, body


def strings(body, values):
    body.align(4)
    body.u32(0)
    length_at, start = len(body.data) - 4, len(body.data)
    for value in values:
        body.string(value)
    struct.pack_into("<I", body.data, length_at, len(body.data) - start)


def connect():
    """A connection to the system bus, authenticated, able to pass
    descriptors, and said Hello on (serial 1)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("/run/dbus/system_bus_socket")
    uid = str(os.geteuid()).encode().hex()
    sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
    if not sock.recv(4096).startswith(b"OK"):
        sys.exit(PROGRAM + ": authentication refused")
    sock.sendall(b"NEGOTIATE_UNIX_FD\r\n")
    if not sock.recv(4096).startswith(b"AGREE_UNIX_FD"):
        sys.exit(PROGRAM + ": the bus does not pass descriptors")
    sock.sendall(b"BEGIN\r\n")
    call(sock, 1, "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello", "org.freedesktop.DBus", "", b"")
    return sock
