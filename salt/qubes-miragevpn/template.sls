# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-miragevpn.template (in the template)
# ==========================================
#
# Installs the qubes-miragevpn package (Debian or Fedora) into the template the VPN qube is
# based on. Its post-install hook tells dom0 the template offers the qubes-miragevpn service.
#
# Execute:
#   sudo qubesctl --skip-dom0 --targets=debian-12-xfce state.sls qubes-miragevpn.template saltenv=user
##

qubes-miragevpn:
  pkg.installed:
    - refresh: true
