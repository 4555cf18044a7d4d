"""The Qubes VPN gateway: the daemon that makes a qube a fail-closed VPN netvm for its AppVMs.

QubesDB and the network facts (`qubesdb`, `facts`), the optional settings file (`settings`),
which profile to use (`profiles`); the firewall policy as data (`policy`, `ruleset`) and its
application (`nft`).
"""
