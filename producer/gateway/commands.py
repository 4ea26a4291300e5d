"""What `visionq gateway` and `visionq keys ...` run (the argument tree is in producer/cli.py)."""
from __future__ import annotations

import argparse
import json

from producer.gateway.keys import KeyStore
from tasks.errors import JobNotFound
from tasks.redis_connect import client_for
from tasks.settings import Settings


def _key_store() -> KeyStore:
    settings = Settings.from_env()
    return KeyStore(client_for(settings), settings.redis_prefix)


def gateway(args: argparse.Namespace) -> int:
    from producer.gateway.server import serve

    return serve(args.host, args.port, no_auth=args.no_auth)


def keys_create(args: argparse.Namespace) -> int:
    new = _key_store().create(args.tenant, max_queued=args.max_queued, rate=args.rate)
    if args.json:
        print(json.dumps(new.to_dict(), indent=2))
        return 0
    print(f"tenant          {new.tenant}")
    print(f"key id          {new.key_id}")
    print(f"key             {new.key}")
    print(f"webhook secret  {new.webhook_secret}")
    print("The key is shown only now (only its hash is stored): keep it. Callers send it as "
          "`Authorization: Bearer <key>`; webhooks of this tenant's jobs are signed with the secret.")
    return 0


def keys_list(args: argparse.Namespace) -> int:
    keys = [k.to_dict() for k in _key_store().list()]
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    if not keys:
        print("no API keys")
    for k in keys:
        limits = f"max_queued={k['max_queued'] or '-'} rate={k['rate'] or '-'}"
        print(f"{k['key_id']}  {k['tenant']:24} {k['created_at']}  {limits}")
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    if not _key_store().revoke(args.key_id):
        raise JobNotFound(f"no API key {args.key_id!r}")
    print(f"{args.key_id} revoked")
    return 0
