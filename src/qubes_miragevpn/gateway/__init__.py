"""The Qubes VPN gateway: the daemon that makes a qube a fail-closed VPN netvm for its AppVMs."""
