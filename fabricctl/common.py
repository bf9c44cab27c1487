"""What every fabricctl command shares: the datastore from the global flags, one-line errors."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from datastore.client import Datastore, DatastoreError, EtcdConfig

T = TypeVar("T")


class CliError(Exception):
    """A failure to report as one line on stderr; exit 2 if ``usage`` else 1."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def etcd_config(args: argparse.Namespace) -> EtcdConfig:
    try:
        return EtcdConfig.from_strings(args.etcd_endpoints, args.etcd_ca, args.etcd_cert,
                                       args.etcd_key, timeout=args.etcd_timeout)
    except ValueError as e:
        raise CliError(f"--etcd-endpoints: {e}", usage=True) from e


def datastore_from_args(args: argparse.Namespace) -> Datastore:
    return Datastore(etcd_config(args))


def run(args: argparse.Namespace, fn: Callable[[Datastore], Awaitable[T]]) -> T:
    """Run ``fn`` with a connected Datastore, translating datastore failures to CliError."""

    async def main() -> T:
        async with datastore_from_args(args) as ds:
            try:
                return await fn(ds)
            except DatastoreError as e:
                source = getattr(args, "etcd_sources", {}).get("etcd_endpoints")
                where = f" ({source})" if source and source != "default" else ""
                raise CliError(f"etcd at {args.etcd_endpoints}{where}: {e}") from e

    return asyncio.run(main())
