"""Routers' own configurations, as shipped or as an operator keeps them, for including
``fabricctl tor-config --snippet`` into (tests/integration/test_tor_routers.py and the
unit tier's ``bird -p`` check)."""

#: /etc/bird/bird.conf as Debian's bird2 ships it, comments cut: its own router id (none:
#: BIRD takes an interface address), device and kernel protocols.
STOCK_BIRD = """\
log syslog all;
protocol device {
}
protocol direct {
  disabled;
  ipv4;
  ipv6;
}
protocol kernel {
  ipv4 { export all; };
}
protocol kernel {
  ipv6 { export all; };
}
protocol static {
  ipv4;
}
"""

#: An operator's frr.conf: Debian's stock line, plus what `write memory` puts first.
STOCK_FRR = """\
frr version 8.4.4
frr defaults traditional
hostname tor1
log syslog informational
service integrated-vtysh-config
!
"""
