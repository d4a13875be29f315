"""`python -m tests.chaos --size small|full|ci [--keep]`: see tests/chaos/run.py."""

from __future__ import annotations

import argparse
import asyncio
import logging

from tests.chaos.run import SIZES, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The school system's own client libraries complain loudly while brokers restart.
    # The ministry gate's server logs the uploads cut short by a killed instance.
    for name in ("aiormq", "aio_pika", "aiomqtt", "aiohttp.server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return asyncio.run(run(args.size, args.keep))


if __name__ == "__main__":
    raise SystemExit(main())
