# Calls org.wharf1.Machine.Shell on the system bus as an attacker would,
# with crafted environment variables (busctl cannot pass the descriptors
# the method takes):
#
#   shell_call.py MACHINE [VAR=VALUE...]    runs `true` with this process's
#                                           stdin, stdout and stderr
#
# Prints the command's exit status on stdout, or the error's name and
# message on stderr with exit status 1. Runs after bus_wire.py, which has
# the wire protocol.


def main():
    machine, environment = sys.argv[1], sys.argv[2:]
    sock = connect()

    body = Writer()
    body.string(machine)
    body.string("")
    strings(body, ["true"])
    strings(body, environment)
    for index in range(3):
        body.u32(index)
    body.u32(0)  # no terminal
    body.string("")
    kind, fields, reply = call(
        sock, 2, "/org/wharf1", "org.wharf1.Machine", "Shell", "org.wharf1", "ssasashhhbs", body.data, fds=[0, 1, 2]
    )
    if kind == 3:
        text = reply[4:].split(b"\0")[0].decode(errors="replace") if reply else ""
        print(fields.get(4, "error") + ": " + text, file=sys.stderr)
        sys.exit(1)
    print(struct.unpack("<i", reply[:4])[0])


main()
