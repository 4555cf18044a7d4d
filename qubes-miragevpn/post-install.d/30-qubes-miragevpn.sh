#!/bin/sh
# Run by the Qubes core agent after package changes in a template (/etc/qubes/post-install.d/):
# tell dom0 this template offers the qubes-miragevpn service, so Qube Settings lists it under
# Services. Turning it on for a qube (`qvm-service sys-vpn qubes-miragevpn on`) creates
# /var/run/qubes-service/qubes-miragevpn there, which both units require.
qvm-features-request supported-service.qubes-miragevpn=1
