"""``fabricctl policy promote NAME [-n NS]``: a staged policy becomes the enforced one.

``-n NS`` (or ``NS/NAME``) names a StagedNetworkPolicy, otherwise a
StagedGlobalNetworkPolicy. One etcd transaction writes the enforced twin (same name,
labels and spec; an existing one of that name is replaced) and deletes the staged policy,
on condition that the staged policy is unchanged since it was read: a concurrent edit
makes the command fail rather than enforce what the operator did not review.
"""

from __future__ import annotations

import argparse

from datastore import keys, model
from datastore.client import Compare, Datastore, Delete, Put
from fabricctl.common import CliError, run


def add_parser(psub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = psub.add_parser("promote", help="enforce a staged policy (it replaces its enforced "
                                        "twin of the same name)")
    p.add_argument("name", metavar="NAME", help="the staged policy, or NS/NAME")
    p.add_argument("-n", "--namespace", help="a StagedNetworkPolicy's namespace (without: "
                                             "a StagedGlobalNetworkPolicy)")
    p.set_defaults(func=cmd_promote)


def staged_key(name: str, namespace: str | None) -> str:
    ns, slash, rest = name.partition("/")
    if slash:
        if namespace is not None and namespace != ns:
            raise CliError(f"{name!r} and -n {namespace} name two namespaces", usage=True)
        return keys.staged_policy(ns, rest)
    return keys.staged_policy(namespace, name) if namespace else keys.staged_global_policy(name)


async def promote(ds: Datastore, key: str) -> str:
    """Promote the staged policy at ``key``; returns the enforced twin's key."""
    kv = await ds.get(key)
    if kv is None:
        raise CliError(f"no staged policy at {keys.relative(key)}")
    staged = model.decode(key, kv.value)
    if not isinstance(staged, model.StagedNetworkPolicy | model.StagedGlobalNetworkPolicy):
        raise CliError(f"{keys.relative(key)} is not a staged policy")
    twin = staged.promoted()
    target = model.key_for(twin)
    res = await ds.txn([Compare(key, "mod", "==", kv.mod_revision)],
                       [Put(target, model.encode(twin)), Delete(key)])
    if not res.succeeded:
        raise CliError(f"{keys.relative(key)} changed while it was promoted: nothing done; "
                       "review it and promote again")
    return target


def cmd_promote(args: argparse.Namespace) -> int:
    key = staged_key(args.name, args.namespace)

    async def go(ds: Datastore) -> str:
        return await promote(ds, key)

    target = run(args, go)
    print(f"promoted {keys.relative(key)} -> {keys.relative(target)}")
    return 0
