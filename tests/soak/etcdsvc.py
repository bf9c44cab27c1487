"""The soak's etcd client, run inside the lab's management namespace (see `soak.lab`).

One JSON request per stdin line, one JSON reply per stdout line:

* ``{"op": "dump", "prefix": P}`` -> ``{"ok": true, "kvs": {key: [value, mod_revision]}}``
* ``{"op": "put", "key": K, "value": V}``, ``{"op": "delete", "key": K}``
* ``{"op": "cas", "key": K, "value": V, "mod": R}`` (replace only if unchanged since R)
* ``{"op": "delete_prefix", "prefix": P}``
* ``{"op": "alarm_nospace"}``: raise the NOSPACE alarm on every member, as etcd does when
  a member's database reaches its quota

Every request is bounded (4 s); a failure is ``{"error": "..."}``, never a traceback:
etcd being down is what the soak does to it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import urlsplit

import aetcd

from datastore.client import Datastore, EtcdConfig


async def _one(ds: Datastore, req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    if op == "dump":
        kvs, _ = await ds.list(str(req["prefix"]))
        return {"ok": True, "kvs": {kv.key: [kv.value.decode(errors="replace"),
                                             kv.mod_revision] for kv in kvs}}
    if op == "put":
        await ds.put(str(req["key"]), str(req["value"]).encode())
        return {"ok": True}
    if op == "delete":
        await ds.delete(str(req["key"]))
        return {"ok": True}
    if op == "delete_prefix":
        await ds.delete_prefix(str(req["prefix"]))
        return {"ok": True}
    if op == "cas":
        await ds.update(str(req["key"]), str(req["value"]).encode(), int(req["mod"]))
        return {"ok": True}
    if op == "alarm_nospace":
        u = urlsplit(ds.config.endpoints[0])
        async with aetcd.Client(host=u.hostname or "", port=u.port or 2379,
                                timeout=2.0) as c:
            await c.create_alarm(0)  # 0: every member
        return {"ok": True}
    return {"error": f"unknown op {op!r}"}


async def _main(endpoints: str) -> None:
    loop = asyncio.get_running_loop()
    ds = Datastore(EtcdConfig.from_strings(endpoints, timeout=2.0))
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            reply = await asyncio.wait_for(_one(ds, json.loads(line)), 4.0)
        except Exception as e:  # every failure is an answer
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await ds.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
