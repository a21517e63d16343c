# Calls org.wharf1.Portable.InspectImage on the system bus with a file
# descriptor, as an attacker would (busctl cannot pass descriptors):
#
#   inspect_call.py IMAGE FD PREFIX        FD: an inherited descriptor number,
#                                          or opath:PATH for an O_PATH one
#
# Prints the reply's body (its strings are readable in it) on stdout, or the
# error's name and message on stderr with exit status 1. Only what the call
# needs of the D-Bus wire protocol, from bus_wire.py, which runs first.


def main():
    image, fd_arg, prefix = sys.argv[1:4]
    fd = os.open(fd_arg[6:], os.O_PATH) if fd_arg.startswith("opath:") else int(fd_arg)
    sock = connect()

    body = Writer()
    body.string(image)
    body.u32(0)  # the first descriptor passed
    body.align(4)
    start = len(body.data) + 4  # the array's elements, after its length
    body.u32(0)
    length_at = len(body.data) - 4
    body.string(prefix)
    struct.pack_into("<I", body.data, length_at, len(body.data) - start)
    body.u32(1)  # cat
    kind, fields, reply = call(
        sock, 2, "/org/wharf1", "org.wharf1.Portable", "InspectImage", "org.wharf1", "shasb", body.data, fds=[fd]
    )
    if kind == 3:
        text = reply[4:].split(b"\0")[0].decode(errors="replace") if reply else ""
        print(fields.get(4, "error") + ": " + text, file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(reply.decode("latin-1").replace("\0", "\n"))


main()
