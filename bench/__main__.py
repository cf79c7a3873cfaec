"""`towerbridge bench` (or `python -m bench` from the repository root): the benchmarks.

The product never imports this package; `towerbridge bench` runs it as a separate process.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench import perf, scale
from towerbridge.errors import ConfigError, TowerbridgeError


def run(args: argparse.Namespace) -> int:
    from towerbridge.data.fetch import fetched_dir
    from towerbridge.milvus import server
    from towerbridge.milvus.store import connect

    ml100k = Path(args.ml100k) if args.ml100k else fetched_dir("movielens-100k")
    if args.ml100k and not (ml100k / "u.data").is_file():
        raise ConfigError(f"--ml100k {args.ml100k}: no u.data there (the MovieLens 100K folder, e.g. ml-100k)")
    scale_items = None if args.no_scale else args.scale_items or (None if args.quick else 1_000_000)
    if scale_items is not None and scale_items < 1100:
        raise ConfigError("--scale-items must be at least 1100 (Milvus 2.3 searches smaller catalogs exactly)")
    with server.endpoint(args.milvus_uri) as uri:
        connect(uri).close()
        sizes = perf.Sizes.of(args.quick)
        if args.items or args.queries:
            sizes = perf.Sizes(items=args.items or sizes.items, users=min(sizes.users, 4 * (args.items or 10**9)),
                               queries=args.queries or sizes.queries)
        if sizes.items < 1100 or sizes.queries < 1:
            raise ConfigError("--items must be at least 1100 (Milvus 2.3 searches smaller catalogs exactly) and "
                              "--queries at least 1")
        result = perf.run(args.quick, ml100k, uri, progress=not args.no_progress, sizes=sizes)
        print(perf.table(result), flush=True)
        if args.out:
            perf.write(result, args.out)
        if scale_items is not None:
            options = scale.ScaleOptions(users=scale_items, items=scale_items,
                                         eval_users=min(scale.ScaleOptions.eval_users, scale_items))
            state = server.running()
            print(f"\nscale run: {scale_items:,} users and items, stages {', '.join(scale.STAGES)} ...", flush=True)

            done: dict = {}

            def report(stage: str, figures: dict) -> None:  # a stage's figures as soon as it ends
                done[stage] = figures
                print(f"  {stage}: {figures['wall_seconds']:.1f} s, peak {figures['peak_mb']:,} MB", flush=True)
                if args.out:
                    perf.write({**result, "scale": {"options": asdict(options), "stages": done}}, args.out)

            with (tempfile.TemporaryDirectory(prefix="towerbridge-scale-") if not args.workdir
                  else contextlib.nullcontext(args.workdir)) as workdir:
                result["scale"] = scale.run(uri, options, Path(workdir),
                                            state.pid if state and state.uri == uri else None, report)
            print(scale.table(result["scale"]))
    if args.out:
        perf.write(result, args.out)
        print(f"figures: {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    bench = argparse.ArgumentParser(
        prog="towerbridge bench",
        description="Training (MovieLens 100K, against the retrieval goals), item embedding, Milvus insert "
                    "and IVF_PQ build against FAISS IndexIVFPQ train+add, and search through Milvus against "
                    "FAISS at the same nprobe and at the same recall, and exact torch search, with recall and "
                    "peak memory; then Milvus IVF_PQ and SCANN, FAISS IndexIVFPQ and IndexIVFPQFastScan + "
                    "IndexRefineFlat, and exact search, each at the cheapest setting reaching recall@100 0.95. "
                    "FAISS is optional: pip install faiss-cpu.",
    )
    bench.add_argument("--quick", action="store_true", help="50k items, 2k queries, no scale run: a few minutes "
                                                            "(default: 200k items, 10k queries, then the scale run)")
    bench.add_argument("--out", metavar="FILE", help="also write every figure as JSON")
    bench.add_argument("--ml100k", metavar="DIR", help="MovieLens 100K folder for the training stage (default: "
                                                       "the copy from `towerbridge data fetch movielens-100k`)")
    bench.add_argument("--milvus-uri", help="Milvus to use (default: MILVUS_URI, else the embedded server)")
    bench.add_argument("--items", type=int, metavar="N", help="catalog size (overrides the mode's)")
    bench.add_argument("--queries", type=int, metavar="N", help="search queries (overrides the mode's)")
    bench.add_argument("--scale-items", type=int, metavar="N",
                       help="the scale run's users and items (default in full mode: 1,000,000 each, ~20M "
                            "interactions; about half an hour on 2 cores); also runs it in --quick mode")
    bench.add_argument("--no-scale", action="store_true", help="leave out the scale run")
    bench.add_argument("--workdir", metavar="DIR", help="keep the scale run's data, model and report here "
                                                        "(default: a temporary directory, removed after)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    return bench


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parser().parse_args(argv))
    except TowerbridgeError as error:
        print(f"towerbridge bench: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
