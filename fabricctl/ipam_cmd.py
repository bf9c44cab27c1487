"""``fabricctl ipam show [--blocks | --ip ADDR] | check [--fix] | release IP``.

See docs/architecture.md §10.

Owns only presentation: the data comes from ``ipam.report``, ``ipam.check`` and
``ipam.allocator``. ``check`` exits 1 when problems remain (so scripts can gate on it) and
prints the report on stdout with one summary line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import netaddr

from datastore.client import Datastore
from fabricctl.common import CliError, run
from fabricctl.output import add_output_flag, dump, table
from ipam.allocator import IpamClient
from ipam.check import DEFAULT_CLAIM_GRACE, DEFAULT_LEAK_GRACE, FixResult, check
from ipam.inputs import EtcdInputs
from ipam.report import address_holder, utilisation
from ipam.snapshot import load_snapshot
from ipam.values import IpamError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ipam", help="IP address management: utilisation, check, release")
    isub = p.add_subparsers(dest="ipam_command", required=True, metavar="SUBCOMMAND",
                            parser_class=type(p))

    def out_flag(q: argparse.ArgumentParser) -> None:
        add_output_flag(q)

    s = isub.add_parser("show", help="pool (and with --blocks block) utilisation; with --ip, "
                                     "who holds one address")
    s.add_argument("--blocks", action="store_true", help="one row per block as well")
    s.add_argument("--ip", metavar="ADDR", default=None,
                   help="who holds ADDR: handle, pod, node, block (exit 1 if nobody)")
    out_flag(s)
    s.set_defaults(func=cmd_show)

    c = isub.add_parser("check", help="find leaked addresses and inconsistent IPAM state")
    c.add_argument("--fix", action="store_true", help="repair what can be repaired")
    c.add_argument("--grace", type=float, default=DEFAULT_LEAK_GRACE, metavar="SECONDS",
                   help="an address without a WorkloadEndpoint counts as leaked after this "
                        f"(default {DEFAULT_LEAK_GRACE:.0f})")
    c.add_argument("--claim-grace", type=float, default=DEFAULT_CLAIM_GRACE,
                   metavar="SECONDS", help="age after which a pending affinity is stale "
                                           f"(default {DEFAULT_CLAIM_GRACE:.0f})")
    out_flag(c)
    c.set_defaults(func=cmd_check)

    r = isub.add_parser("release", help="release one address, whoever holds it")
    r.add_argument("ip", help="the address to release")
    out_flag(r)
    r.set_defaults(func=cmd_release)


def cmd_show_ip(args: argparse.Namespace) -> int:
    try:
        netaddr.IPAddress(args.ip)
    except (netaddr.AddrFormatError, ValueError) as e:
        raise CliError(f"--ip {args.ip!r} is not an IP address", usage=True) from e

    async def go(ds: Datastore) -> dict[str, Any]:
        return address_holder(await load_snapshot(ds), args.ip)

    d = run(args, go)
    if args.output != "table":
        dump(d, args.output)
    elif d["allocated"]:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d["since"])) if d["since"] else ""
        pod = f"{d['namespace']}/{d['pod']}" if d["pod"] else ""
        table(["ADDRESS", "HANDLE", "POD", "NODE", "BLOCK", "BLOCK NODE", "POOL", "SINCE"],
              [[d["address"], d["handle"], pod, d["node"], d["block"], d["blockNode"],
                d["pool"], since]])
        if not d["handleRecord"]:
            print(f"fabricctl: warning: handle {d['handle']} has no record of {d['address']} "
                  "(run fabricctl ipam check)", file=sys.stderr)
    else:
        where = (f"block {d['block']} (node {d['blockNode']})" if d["block"]
                 else "no block" if d["pool"] else "no pool")
        print(f"{d['address']} is not allocated ({where}"
              f"{', pool ' + d['pool'] if d['pool'] else ''}"
              f"{', reserved' if d['reserved'] else ''})")
    return 0 if d["allocated"] else 1


def cmd_show(args: argparse.Namespace) -> int:
    if args.ip is not None:
        return cmd_show_ip(args)

    async def go(ds: Datastore) -> dict[str, Any]:
        return utilisation(await load_snapshot(ds), with_blocks=args.blocks)

    data = run(args, go)
    if args.output != "table":
        dump(data, args.output)
        return 0
    table(["POOL", "CIDR", "BLOCKSIZE", "DISABLED", "BLOCKS", "ALLOCATED", "SIZE", "BORROWED",
           "USED%"],
          [[r["pool"], r["cidr"], r["blockSize"], r["disabled"],
            f"{r['blocks']}/{r['blocksTotal']}", r["allocated"], r["size"], r["borrowed"],
            r["utilisation"]] for r in data["pools"]])
    if args.blocks:
        sys.stdout.write("\n")
        table(["BLOCK", "POOL", "NODE", "AFFINITY", "ALLOCATED", "FREE", "RESERVED",
               "BORROWED", "USED%"],
              [[r["block"], r["pool"], r["node"], r["state"], f"{r['allocated']}/{r['size']}",
                r["free"], r["reserved"], r["borrowed"], r["utilisation"]]
               for r in data["blocks"]])
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    if args.grace < 0 or args.claim_grace < 0:
        raise CliError("--grace and --claim-grace must not be negative", usage=True)

    async def go(ds: Datastore) -> list[FixResult]:
        return await check(ds, fix=args.fix, now=time.time, leak_grace=args.grace,
                           claim_grace=args.claim_grace)

    results = run(args, go)
    data = [{**r.problem.to_json(), "fixed": r.fixed, "note": r.note} for r in results]
    if args.output != "table":
        dump({"problems": data}, args.output)
    elif results:
        cols = ["KIND", "SUBJECT", "DETAIL"] + (["FIXED", "NOTE"] if args.fix else [])
        table(cols, [[d["kind"], d["subject"], d["detail"]]
                     + ([d["fixed"], d["note"]] if args.fix else []) for d in data])
    else:
        print("IPAM is consistent: no problems found")
    remaining = [r for r in results if not r.fixed]
    if not remaining:
        if results:
            print(f"fabricctl: fixed {len(results)} problem(s)", file=sys.stderr)
        return 0
    verb = "could not fix" if args.fix else "found"
    print(f"fabricctl: ipam check {verb} {len(remaining)} problem(s)", file=sys.stderr)
    return 1


def cmd_release(args: argparse.Namespace) -> int:
    try:
        ip = str(netaddr.IPAddress(args.ip))
    except (netaddr.AddrFormatError, ValueError) as e:
        raise CliError(f"{args.ip!r} is not an IP address", usage=True) from e

    async def go(ds: Datastore) -> list[str]:
        # No cluster state in this process: its own provider reads the configuration.
        client = IpamClient(ds, "fabricctl", unavailable_budget=args.etcd_timeout * 2,
                            inputs=EtcdInputs(ds, "fabricctl"))
        try:
            return await client.release_ips([ip])
        except IpamError as e:
            raise CliError(str(e)) from e

    released = run(args, go)
    data = {"address": ip, "released": bool(released)}
    if args.output != "table":
        dump(data, args.output)
    elif released:
        print(f"released {ip}")
    else:
        print(f"{ip} was not allocated; nothing to do")
    return 0
