"""Tiny etcd reader/writer the lab runs *inside* the management namespace.

The lab's etcd listens only on the management bridge, which the root namespace cannot
reach (on purpose: nothing in the root namespace talks to the lab's network). So the
runner executes ``ip netns exec <mgmt> python -m fabricctl.lab.etcdio ENDPOINT CMD`` for
its etcd work, once per batch:

* ``put``: stdin is a JSON list of ``[key, value]``; all are written.
* ``dump PREFIX``: prints a JSON object ``{key: value}`` of every key under PREFIX
  (values as text).
* ``delete-prefix PREFIX``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from datastore.client import Datastore, EtcdConfig


async def _main(endpoint: str, cmd: str, arg: str | None) -> int:
    async with Datastore(EtcdConfig.from_strings(endpoint)) as ds:
        if cmd == "put":
            for key, value in json.load(sys.stdin):
                await ds.put(str(key), str(value).encode())
        elif cmd == "dump":
            kvs, _ = await ds.list(arg or "/")
            print(json.dumps({kv.key: kv.value.decode(errors="replace") for kv in kvs}))
        elif cmd == "delete-prefix":
            await ds.delete_prefix(arg or "/nonexistent/")
        else:
            print(f"etcdio: unknown command {cmd}", file=sys.stderr)
            return 2
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: etcdio ENDPOINT put|dump|delete-prefix [PREFIX]", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(argv[0], argv[1], argv[2] if len(argv) > 2 else None))
    except Exception as e:
        print(f"etcdio: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
