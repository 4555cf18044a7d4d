# -*- coding: utf-8 -*-
# vim: set syntax=yaml ts=2 sw=2 sts=2 et :
##
# qubes-miragevpn.sys-vpn (dom0)
# ==============================
#
# Creates the VPN qube (default sys-vpn) from the template that has the qubes-miragevpn
# package: it provides network, takes its own from `netvm`, starts with the system, runs the
# qubes-miragevpn service, and gets the knobs the daemon reads from QubesDB
# (/vm-config/miragevpn-profile, /vm-config/miragevpn-log-level, /vm-config/miragevpn-names: the
# AppVMs' names for the blocked-traffic report). Then points the AppVMs listed
# in the pillar at it, and installs the qrexec policy for qubes.MirageVPNStatus.
#
# Pillar: qubes-miragevpn (see pillar/qubes-miragevpn.sls.example).
# Execute:
#   sudo qubesctl state.sls qubes-miragevpn.sys-vpn saltenv=user
##
{%- from "qubes-miragevpn/map.jinja" import vpn with context %}

{{ vpn.name }}-present:
  qvm.present:
    - name: {{ vpn.name }}
    - template: {{ vpn.template }}
    - label: {{ vpn.label }}

{{ vpn.name }}-prefs:
  qvm.prefs:
    - name: {{ vpn.name }}
    - netvm: {{ vpn.netvm }}
    - provides-network: true
    - memory: {{ vpn.memory }}
    - maxmem: {{ vpn.maxmem }}
    - vcpus: {{ vpn.vcpus }}
    - autostart: {{ vpn.autostart }}
    - require:
      - qvm: {{ vpn.name }}-present

{{ vpn.name }}-service:
  qvm.service:
    - name: {{ vpn.name }}
    - enable:
      - qubes-miragevpn
    - require:
      - qvm: {{ vpn.name }}-present

{%- set knobs = {} %}
{%- if vpn.profile %}{% do knobs.update({'vm-config.miragevpn-profile': vpn.profile}) %}{% endif %}
{%- if vpn.log_level %}{% do knobs.update({'vm-config.miragevpn-log-level': vpn.log_level}) %}{% endif %}
{%- if vpn.names %}
{%- set pairs = [] %}
{%- for address, qube in vpn.names|dictsort %}{% do pairs.append(address ~ '=' ~ qube) %}{% endfor %}
{%- do knobs.update({'vm-config.miragevpn-names': pairs|join(' ')}) %}
{%- endif %}

{{ vpn.name }}-features:
  qvm.features:
    - name: {{ vpn.name }}
    - enable:
      - servicevm
{%- if knobs %}
    - set:
{%- for key, value in knobs|dictsort %}
      - {{ key }}: {{ value|yaml_dquote }}
{%- endfor %}
{%- endif %}
    - require:
      - qvm: {{ vpn.name }}-present

{%- for appvm in vpn.appvms %}

{{ appvm }}-netvm:
  qvm.prefs:
    - name: {{ appvm }}
    - netvm: {{ vpn.name }}
    - require:
      - qvm: {{ vpn.name }}-prefs
{%- endfor %}

/etc/qubes/policy.d/30-qubes-miragevpn.policy:
  file.managed:
    - source: salt://qubes-miragevpn/files/30-qubes-miragevpn.policy
    - user: root
    - group: qubes
    - mode: '0664'
