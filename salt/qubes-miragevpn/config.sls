# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-miragevpn.config (in the VPN qube)
# ========================================
#
# Puts the VPN profile, the files it names and the credentials from the pillar
# (qubes-miragevpn:files, and qubes-miragevpn:settings as settings.yaml) into the qube's
# persistent /rw/config/qubes-miragevpn/, readable by root only (folder 0700, files 0600),
# then restarts the daemon so that it reads them.
#
# Execute:
#   sudo qubesctl --skip-dom0 --targets=sys-vpn state.sls qubes-miragevpn.config saltenv=user
##
{%- from "qubes-miragevpn/map.jinja" import vpn with context %}
{%- set folder = '/rw/config/qubes-miragevpn' %}

{{ folder }}:
  file.directory:
    - user: root
    - group: root
    - mode: '0700'

{%- for name, text in vpn.files|dictsort %}

{{ folder }}/{{ name }}:
  file.managed:
    - contents: {{ text|yaml_dquote }}
    - user: root
    - group: root
    - mode: '0600'
    - show_changes: false
    - require:
      - file: {{ folder }}
    - watch_in:
      - cmd: qubes-miragevpn-reload
{%- endfor %}

{%- if vpn.settings %}

{{ folder }}/settings.yaml:
  file.serialize:
    - dataset: {{ vpn.settings|json }}
    - serializer: yaml
    - user: root
    - group: root
    - mode: '0600'
    - require:
      - file: {{ folder }}
    - watch_in:
      - cmd: qubes-miragevpn-reload
{%- endif %}

qubes-miragevpn-reload:
  cmd.wait:
    - name: systemctl try-restart qubes-miragevpn.service
