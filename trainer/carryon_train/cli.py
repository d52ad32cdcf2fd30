"""`python3 -m carryon_train` (or trainer/carryon-train): harvest, train, pull, push."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from . import node
from .evaluate import DEFAULT_ALPHAS
from .train import TrainOptions


def _layers(spec: str) -> List:
    return [s.strip() if s.strip() == "final" else int(s) for s in spec.split(",") if s.strip()]


def _floats(spec: str) -> List[float]:
    return [float(s) for s in spec.split(",") if s.strip()]


def _admin_key(args: argparse.Namespace) -> str:
    if args.key_file:
        with open(args.key_file, encoding="utf-8") as f:
            return f.read().strip()
    key = os.environ.get("CARRYON_ADMIN_KEY", "")
    if not key:
        sys.exit("an admin key is needed: --key-file FILE or CARRYON_ADMIN_KEY")
    return key


def _gateway_args(p: argparse.ArgumentParser, tenant_required: bool) -> None:
    p.add_argument("--url", required=True, help="gateway base URL, e.g. http://localhost:8080")
    p.add_argument("--key-file", help="file holding an admin key (default: $CARRYON_ADMIN_KEY; never a flag, so it stays out of ps)")
    p.add_argument("--tenant", required=tenant_required, help="tenant whose shards / carry-ons these are")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="carryon-train", description="Train GPT Carry-On modules on harvested hidden states.")
    sub = ap.add_subparsers(dest="command", required=True)

    h = sub.add_parser("harvest", help="run the base over a text/JSONL file and write shards (the gateway's offline harvest)")
    h.add_argument("--base", required=True, help="model package folder")
    h.add_argument("--input", required=True)
    h.add_argument("--out", required=True)
    h.add_argument("--format", choices=["text", "jsonl", "chat"])
    h.add_argument("--layers", default="final")
    h.add_argument("--max-tokens", type=int)
    h.add_argument("--limit", type=int)
    h.add_argument("--sigma", default="f16", choices=["f16", "int8", "none"])

    t = sub.add_parser("train", help="train, evaluate, export and verify a carry-on")
    t.add_argument("--base", required=True, help="model package folder the shards were harvested from")
    t.add_argument("--shards", nargs="*", default=[], help="shard files or folders (searched recursively)")
    t.add_argument("--text", help="instead of / besides --shards: a data file to harvest first (text, JSONL, chat)")
    t.add_argument("--format", choices=["text", "jsonl", "chat"], help="format of --text")
    t.add_argument("--limit", type=int, help="records of --text to harvest")
    t.add_argument("--out", required=True, help="run folder: checkpoints, logs, carry-on/, report.json")
    t.add_argument("--id", required=True, help="carry-on id (a lowercase slug)")
    t.add_argument("--description", default="")
    # architecture
    t.add_argument("--width", type=int, default=64)
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--kv-heads", type=int, default=0)
    t.add_argument("--intermediate", type=int, default=0)
    t.add_argument("--layers-in", default="final", help="base hidden states read, e.g. final,2")
    t.add_argument("--token-ids", action="store_true", help="also read token ids (an embedding table of vocab × width)")
    # mixture carry-ons: secondary bases sharing the tokenizer (repeat each flag once per base, in order)
    t.add_argument("--secondary-shards", action="append", default=[], metavar="DIR_OR_FILES",
                   help="a mixture's secondary base: its shards, with the primary's sequences (same request ids, or the same "
                        "records in order; repeatable, one per secondary base, in order; several paths separated by commas)")
    t.add_argument("--secondary-layers", action="append", default=[], metavar="SPEC",
                   help="that secondary base's hidden states read, as --layers-in (repeatable, same count; default final)")
    t.add_argument("--secondary-base", action="append", default=[], metavar="PKG_DIR",
                   help="that secondary base's model package (optional; repeatable, same count): checks fingerprint, "
                        "hidden size, vocabulary and layers against its shards; with --pull-from and no --secondary-shards, "
                        "its shards are pulled too")
    t.add_argument("--secondary-eval-shards", action="append", default=[], metavar="DIR_OR_FILES",
                   help="with --eval-shards: the secondary base's held-out shards (repeatable, same count)")
    # optimisation
    d = TrainOptions()
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--seq-len", type=int, default=0, help="window length (default: the base's context)")
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio)
    t.add_argument("--warmup", type=int, default=d.warmup)
    t.add_argument("--schedule", choices=["cosine", "constant"], default=d.schedule)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--grad-clip", type=float, default=d.grad_clip)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--alpha", type=float, default=d.alpha, help="α used in training (default 1, the manifest default)")
    t.add_argument("--chunk-rows", type=int, default=None, help="rows per head chunk (default: 64 MiB of logits)")
    t.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    t.add_argument("--log-every", type=int, default=d.log_every)
    t.add_argument("--eval-every", type=int, default=d.eval_every)
    t.add_argument("--eval-fraction", type=float, default=0.1)
    t.add_argument("--eval-shards", nargs="*", help="held-out shards (instead of a fraction of --shards)")
    t.add_argument("--loss-rows", choices=["auto", "all", "completion"], default="auto",
                   help="auto: completion rows when the shards have any (chat), else all")
    t.add_argument("--alphas", default=",".join(map(str, DEFAULT_ALPHAS)), help="α values swept on held-out data")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --out")
    t.add_argument("--no-export", action="store_true")
    # closing the loop
    t.add_argument("--pull-from", metavar="URL", help="first download the tenant's shards from this gateway's admin API")
    t.add_argument("--push-to", metavar="URL", help="afterwards upload the carry-on to this gateway")
    t.add_argument("--tenant", help="tenant for --pull-from / --push-to")
    t.add_argument("--alias", help="with --push-to: point this alias (e.g. stable) at the new version")
    t.add_argument("--key-file")

    p = sub.add_parser("pull", help="download a tenant's harvested shards from a gateway")
    _gateway_args(p, tenant_required=False)
    p.add_argument("--out", required=True)
    p.add_argument("--base-fingerprint", help="skip shards of any other base")

    u = sub.add_parser("push", help="upload a carry-on package to a gateway")
    _gateway_args(u, tenant_required=True)
    u.add_argument("--package", required=True, help="carry-on folder (model.onnx + manifest.json)")
    u.add_argument("--alias")
    return ap


def entry() -> int:
    """The `carryon-train` console script and `python -m carryon_train`: a trainer the gateway
    started (CARRYON_PARENT_PID) dies with it, then the command line runs."""
    from .lifetime import die_with_parent

    die_with_parent()
    return main()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "harvest":
        print(node.harvest(args.base, args.input, args.out, args.format, _layers(args.layers), args.max_tokens, args.limit, args.sigma), end="")
        return 0
    if args.command == "pull":
        from .gateway import AdminClient

        paths = AdminClient(args.url, _admin_key(args)).pull(args.out, args.tenant, args.base_fingerprint)
        print(json.dumps({"shards": paths}))
        return 0
    if args.command == "push":
        return _push(args, args.package)
    return _train(args)


def _push(args: argparse.Namespace, package: str) -> int:
    from .gateway import AdminClient

    client = AdminClient(args.url, _admin_key(args))
    created = client.upload_carry_on(args.tenant, package)
    print(json.dumps(created))
    if args.alias:
        client.set_alias(args.tenant, created.get("carry_on", created.get("id")), args.alias, int(created["version"]))
    return 0


def _paths(spec: str) -> List[str]:
    return [p for p in spec.split(",") if p]


def _secondaries(args: argparse.Namespace) -> List[dict]:
    """One entry per --secondary-shards (a mixture's secondary bases, in order); the other
    --secondary-* flags are given once per base or not at all (--secondary-layers: default final)."""
    n = len(args.secondary_shards)
    for flag, values in (("--secondary-layers", args.secondary_layers), ("--secondary-base", args.secondary_base),
                         ("--secondary-eval-shards", args.secondary_eval_shards)):
        if values and len(values) != n:
            sys.exit(f"{flag} given {len(values)} times, --secondary-shards {n} times: one per secondary base, in the same order")
    if n and args.text:
        sys.exit("a mixture trains from --shards (the primary's) and --secondary-shards: harvest each base over the same file first")
    if args.secondary_eval_shards and not args.eval_shards:
        sys.exit("--secondary-eval-shards needs --eval-shards")
    return [{"shards": _paths(args.secondary_shards[j]),
             "layers": _layers(args.secondary_layers[j]) if args.secondary_layers else ["final"],
             "base": args.secondary_base[j] if args.secondary_base else None,
             "eval_shards": _paths(args.secondary_eval_shards[j]) if args.secondary_eval_shards else None} for j in range(n)]


def _train(args: argparse.Namespace) -> int:
    from .distributed import Dist
    from .pipeline import resolve_device

    if (args.pull_from or args.push_to) and not args.tenant:
        sys.exit("--pull-from / --push-to need --tenant")
    device = resolve_device(args.device)
    dist = Dist.from_env(device)  # torchrun: join its process group; else the one-process run
    try:
        return _train_in(args, dist, dist.device(device))
    finally:
        dist.close()


def _train_in(args: argparse.Namespace, dist, device: str) -> int:
    from .base import BasePackage
    from .pipeline import configure_torch, train_carry_on

    if dist.enabled and (args.pull_from or args.text):
        # N processes would pull or harvest into the same folder at once: do that step first.
        sys.exit("under torchrun, train from --shards: fetch them first with `carryon-train pull` or "
                 "`carryon-train harvest`, then launch with --shards")
    shards = list(args.shards)
    if args.pull_from:
        from .gateway import AdminClient

        dest = os.path.join(args.out, "shards")
        client = AdminClient(args.pull_from, _admin_key(args))
        got = client.pull(dest, args.tenant, BasePackage.open(args.base).fingerprint)
        print(f"pulled {len(got)} shards into {dest}", file=sys.stderr)
        shards.append(dest)
        if args.secondary_base and not args.secondary_shards:
            # A mixture from live traffic: a policy naming several bases left each base's shards
            # under the tenant; the trainer joins them by request id.
            for j, sec in enumerate(args.secondary_base):
                sec_dest = os.path.join(args.out, f"shards-secondary-{j}")
                got = client.pull(sec_dest, args.tenant, BasePackage.open(sec).fingerprint)
                print(f"pulled {len(got)} shards of secondary base {j} into {sec_dest}", file=sys.stderr)
                args.secondary_shards.append(sec_dest)
    if args.text:
        dest = os.path.join(args.out, "harvest")
        print(node.harvest(args.base, args.text, dest, args.format, _layers(args.layers_in), None, args.limit), end="", file=sys.stderr)
        shards.append(dest)
    if not shards:
        sys.exit("no data: pass --shards, --text or --pull-from")
    secondaries = _secondaries(args)
    configure_torch(device, args.threads)
    options = TrainOptions(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup=args.warmup,
        schedule=args.schedule, weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed, alpha=args.alpha,
        chunk_rows=args.chunk_rows, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        eval_every=args.eval_every, device=device, progress=not args.no_progress,
    )
    arch = dict(width=args.width, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, intermediate=args.intermediate,
                input_layers=_layers(args.layers_in), reads_token_ids=args.token_ids)
    report = train_carry_on(args.base, shards, args.out, args.id, arch, options, seq_len=args.seq_len or None,
                            eval_fraction=args.eval_fraction, eval_shards=args.eval_shards, loss_rows=args.loss_rows,
                            alphas=_floats(args.alphas), description=args.description, export=not args.no_export,
                            resume=not args.no_resume, dist=dist, secondaries=secondaries)
    if not dist.main:
        return 0  # rank 0 reports, exports and pushes
    ev = report.get("eval")
    if ev:
        print(f"held-out loss: base {ev['base']['loss']:.4f} (ppl {ev['base']['ppl']:.2f}), carry-on α={args.alpha:g} "
              f"{ev['carry_on']['loss']:.4f} (ppl {ev['carry_on']['ppl']:.2f}); best α {ev['best_alpha']:g}: {ev['best']['loss']:.4f}",
              file=sys.stderr)
    if "export" in report:
        print(f"carry-on {args.id} -> {report['export']['package']} ({report['export']['bytes']} bytes, parity "
              f"{report['export']['verify']['maxAbsDiff']['full']})", file=sys.stderr)
    print(json.dumps({"report": os.path.join(os.path.abspath(args.out), "report.json"), "package": report.get("export", {}).get("package")}))
    if args.push_to:
        if "export" not in report:
            sys.exit("--push-to needs an export (drop --no-export)")
        args.url = args.push_to
        return _push(args, report["export"]["package"])
    return 0
