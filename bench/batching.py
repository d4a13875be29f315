"""`python -m bench.batching`: the daemon end to end under settings side by side, one run.

Each variant (`name:HOCBA_X=v,HOCBA_Y=w`) starts its own instances on the same PDFs,
keys, broker, database and machine, and the variants take turns (`--rounds`), so
that a noisy neighbour weighs on all of them alike. One JSON document on stdout:
per variant and round, end_to_end's figures (CPU per signature by process included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from bench import end_to_end, pki_server
from bench.environment import bench_env, samples


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`name:HOCBA_X=v,HOCBA_Y=w` as (name, its settings), for the side-by-side benches."""
    name, _, settings = text.partition(":")
    pairs = [item.split("=", 1) for item in settings.split(",") if item]
    return name, {key: value for key, value in pairs}


async def compare(
    variants: list[tuple[str, dict[str, str]]], records: int, instances: int, rounds: int
) -> dict[str, Any]:
    async with (
        bench_env(schools=2) as env,
        pki_server.started(env.dev.base / "pki") as pki,
    ):
        pool = await asyncio.to_thread(samples, env.dev.schools, records, env.tag)
        doc: dict[str, Any] = {"records": records, "instances": instances, "variants": {}}
        for round_ in range(rounds):
            for name, settings in variants:
                print(f"batching: round {round_ + 1}, {name}…", file=sys.stderr, flush=True)
                async with end_to_end.instances(env, instances, extra_env=settings) as running:
                    tag = f"{name}{round_}"
                    await end_to_end.measure(env, running, pool[:4], f"w{tag}", pki_pid=pki.pid)
                    figures, _ = await end_to_end.measure(
                        env, running, pool, f"r{tag}", pki_pid=pki.pid
                    )
                doc["variants"].setdefault(name, []).append(figures)
        return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__)
    parser.add_argument("--records", type=int, default=120)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("variant", nargs="+", help="name:HOCBA_SETTING=value,…")
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    doc = asyncio.run(compare(variants, args.records, args.instances, args.rounds))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
