"""The policy engine: calculation (pure), interpreter, nftables/iptables backends, manager."""
