"""``fabric-agent``: the l3fabric node agent (docs/architecture.md §2, §10).

Every flag also reads ``L3FABRIC_<FLAG>`` from the environment (``--etcd-endpoints`` ->
``L3FABRIC_ETCD_ENDPOINTS``). Logs are one line per event on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence

from datastore.client import EtcdConfig
from datastore.version import l3fabric_version


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("L3FABRIC_" + flag.upper().replace("-", "_"), default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fabric-agent", description="l3fabric node agent")
    p.add_argument("--version", action="version", version=f"fabric-agent {l3fabric_version()}")
    p.add_argument("--node", default=_env("node"), help="this node's name (required)")
    p.add_argument("--etcd-endpoints", default=_env("etcd-endpoints", "http://127.0.0.1:2379"))
    p.add_argument("--etcd-ca", default=_env("etcd-ca"))
    p.add_argument("--etcd-cert", default=_env("etcd-cert"))
    p.add_argument("--etcd-key", default=_env("etcd-key"))
    p.add_argument("--socket", default=_env("socket", "/run/l3fabric/agent.sock"))
    p.add_argument("--metrics-addr", default=_env("metrics-addr", "127.0.0.1:9091"))
    p.add_argument("--policy-backend", choices=["nftables", "iptables"],
                   default=_env("policy-backend", "nftables"))
    p.add_argument("--flow-log-allowed", action="store_true",
                   default=(_env("flow-log-allowed", "") or "").lower() in ("1", "true", "yes"),
                   help="log allowed new connections to the flow log too (denied ones always)")
    p.add_argument("--node-ip", default=_env("node-ip"),
                   help="address in CIDR form for registering the Node (default: the "
                        "address of the default route's interface)")
    p.add_argument("--node-ip6", default=_env("node-ip6"),
                   help="IPv6 address in CIDR form for registering the Node "
                        "(bgp.ipv6Address: the next hop of its IPv6 blocks; default: none)")
    p.add_argument("--netns", default=_env("netns"),
                   help="program this network namespace instead of the agent's own")
    p.add_argument("--resync-interval", type=float,
                   default=float(_env("resync-interval", "60") or 60),
                   help="seconds between re-reads of the kernel (routes, addresses, the "
                        "policy table: what was changed behind the agent's back is put "
                        "right), jittered by 10 %% (default 60)")
    p.add_argument("--snapshot-interval", type=float,
                   default=float(_env("snapshot-interval", "1800") or 1800),
                   help="seconds between fresh snapshots of etcd (the watches' safety "
                        "net), after which the policy is recalculated from scratch, "
                        "jittered by 20 %%; every agent reads the whole cluster then "
                        "(default 1800)")
    p.add_argument("--status-ttl", type=int, default=int(_env("status-ttl", "30") or 30),
                   help="seconds the node's NodeStatus outlives the agent (its etcd lease, "
                        "kept alive every third of it, at most every 10 s): how long a "
                        "dead agent's node shows up in fabricctl node status (default 30, "
                        "at least 3)")
    p.add_argument("--log-level", default=_env("log-level", "info"))
    p.add_argument("--cleanup", action="store_true",
                   help="remove everything the agent installed on this node, then exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cleanup:
        from felix_like.cleanup import cleanup

        print(cleanup(args.netns, args.socket))
        return 0
    if not args.node:
        print("fabric-agent: --node (or L3FABRIC_NODE) is required", file=sys.stderr)
        return 2
    try:
        etcd = EtcdConfig.from_strings(args.etcd_endpoints, args.etcd_ca, args.etcd_cert,
                                       args.etcd_key)
    except ValueError as e:
        print(f"fabric-agent: --etcd-endpoints: {e}", file=sys.stderr)
        return 2
    if args.status_ttl < 3:
        print("fabric-agent: --status-ttl must be at least 3 seconds", file=sys.stderr)
        return 2
    if args.node_ip6:
        try:
            if "/" not in args.node_ip6:
                raise ValueError("no prefix length")
            ipaddress.IPv6Interface(args.node_ip6)
        except ValueError:
            print(f"fabric-agent: --node-ip6: {args.node_ip6!r} is not an IPv6 address in CIDR "
                  "form (fd99::1/64)", file=sys.stderr)
            return 2
    from felix_like.agent import Agent, AgentConfig
    from felix_like.sdnotify import SystemdNotifier

    # systemd's notify socket (Type=notify) is the agent's own: ExaBGP, which the agent
    # starts, must not inherit it.
    notifier = SystemdNotifier.from_environ(unset=True)

    cfg = AgentConfig(node=args.node, etcd=etcd, socket=args.socket,
                      metrics_addr=args.metrics_addr, policy_backend=args.policy_backend,
                      flow_log_allowed=args.flow_log_allowed,
                      node_ip=args.node_ip, node_ip6=args.node_ip6, netns=args.netns,
                      resync_interval=args.resync_interval,
                      snapshot_interval=args.snapshot_interval, status_ttl=args.status_ttl,
                      status_interval=min(10.0, args.status_ttl / 3))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg, notifier=notifier).run(stop)

    try:
        asyncio.run(run())
    except Exception as e:
        logging.getLogger("fabric-agent").error("agent failed: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
