"""qubes_miragevpn: the runtimes around the miragevpn engine (unix client, later the Qubes gateway).

Each kind of IO lives in one adapter module; everything else is a pure function of data.
"""
