"""``tune download <repo_id>``: a model snapshot from the Hugging Face Hub."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tune.checkpoint.hub import HubDownloadError, download_snapshot, is_repo_id


def repo_id(value: str) -> str:
    """argparse type: ``name`` or ``owner/name``."""
    if not is_repo_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Hub repo id (expected owner/name)")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune download``."""
    p = sub.add_parser("download", help="download a model from the Hugging Face Hub")
    p.add_argument("repo_id", type=repo_id, help="owner/name on the Hub")
    p.add_argument("--output-dir", help="where to put it (default: checkpoints/<name>)")
    p.add_argument("--hf-token", help="access token (default: HF_TOKEN or the cached login)")
    p.add_argument("--revision", help="branch, tag or commit")
    p.add_argument("--ignore-patterns", nargs="*", default=["original/*"], metavar="GLOB")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Download the snapshot; failures are one line on stderr, exit status 2."""
    out = Path(args.output_dir or Path("checkpoints") / args.repo_id.split("/")[-1])
    try:
        path = download_snapshot(
            args.repo_id, out, revision=args.revision, token=args.hf_token,
            ignore_patterns=args.ignore_patterns,
        )  # fmt: skip
    except ImportError:
        error = "huggingface_hub is not installed; pip install 'tune-recipes[download]'"
    except HubDownloadError as exc:
        error = str(exc).replace("need a token", "need --hf-token")
    else:
        print(f"Downloaded {args.repo_id} to {path}")
        return 0
    print(f"tune download: error: {error}", file=sys.stderr)
    return 2
