"""miragevpn: a sans-IO OpenVPN client engine.

Nothing in this package opens a socket or a file, reads a clock or draws hidden randomness:
bytes and time go in, bytes, events and deadlines come out.
"""
