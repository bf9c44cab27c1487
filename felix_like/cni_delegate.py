"""IPAM delegated to another IPAM plugin: the one ``ipam.type`` names, exec'd from
``CNI_PATH`` with the same stdin and the env the spec asks for."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from typing import Any, Final

from cni.protocol import CniError, CniRequest
from felix_like.cni_base import ERR_IPAM, log

_DELEGATE_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


async def exec_ipam(req: CniRequest, command: str) -> dict[str, Any]:
    """Run the IPAM plugin named by ``ipam.type`` from CNI_PATH (spec: same env and
    stdin, CNI_COMMAND as for us). Its error is passed on as is."""
    path = find_plugin(req.ipam_type, req.cni_path)
    if path is None:
        raise CniError(ERR_IPAM, f"IPAM plugin {req.ipam_type!r} not found in CNI_PATH",
                       ":".join(req.cni_path) or "CNI_PATH is empty")
    env = delegate_env(req, command)
    proc = await asyncio.create_subprocess_exec(
        path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await proc.communicate(json.dumps(req.config).encode())
    text = out.decode(errors="replace").strip()
    if proc.returncode != 0:
        try:
            obj = json.loads(text)
            code = int(obj.get("code", ERR_IPAM))
            msg = str(obj.get("msg", "failed"))
            details = str(obj.get("details", ""))
        except (ValueError, AttributeError, TypeError):
            code, msg, details = ERR_IPAM, "failed", (text or err.decode(errors="replace"))
        raise CniError(code, f"IPAM plugin {req.ipam_type}: {msg}", details[:1024])
    if command != "ADD":
        return {}
    try:
        res = json.loads(text)
    except ValueError as e:
        raise CniError(ERR_IPAM, f"IPAM plugin {req.ipam_type} printed no JSON result",
                       text[:256]) from e
    if not isinstance(res, dict):
        raise CniError(ERR_IPAM, f"IPAM plugin {req.ipam_type} printed no JSON object")
    return res


async def exec_ipam_quiet(req: CniRequest, command: str) -> bool:
    try:
        await exec_ipam(req, command)
        return True
    except CniError as e:
        log.warning("IPAM plugin %s %s: %s", req.ipam_type, command, e)
        return False


def delegate_env(req: CniRequest, command: str) -> dict[str, str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": req.container_id,
        "CNI_NETNS": req.netns,
        "CNI_IFNAME": req.ifname,
        "CNI_PATH": ":".join(req.cni_path),
        "PATH": _DELEGATE_PATH,
    }
    args = ";".join(f"{k}={v}" for k, v in req.cni_args.items())
    if args:
        env["CNI_ARGS"] = args
    return env


def find_plugin(name: str, paths: Sequence[str]) -> str | None:
    if not name or "/" in name:
        return None
    for d in paths:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None
