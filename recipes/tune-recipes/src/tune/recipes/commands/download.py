"""``tune download <repo_id>``: a model snapshot from the Hugging Face Hub."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def repo_id(value: str) -> str:
    """argparse type: ``name`` or ``owner/name``."""
    if not _REPO_ID.match(value) or ".." in value:
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


def _one_line(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def main(args: argparse.Namespace) -> int:
    """Download with ``snapshot_download``; failures are one line on stderr, exit status 2."""
    try:
        import huggingface_hub
    except ImportError:
        print(
            "tune download: error: huggingface_hub is not installed; "
            "pip install 'tune-recipes[download]'",
            file=sys.stderr,
        )
        return 2
    out = Path(args.output_dir or Path("checkpoints") / args.repo_id.split("/")[-1])
    try:
        path = huggingface_hub.snapshot_download(
            args.repo_id,
            revision=args.revision,
            local_dir=out,
            token=args.hf_token,
            ignore_patterns=args.ignore_patterns or None,
        )
    except Exception as exc:  # one line, never a traceback; the token is scrubbed
        name = type(exc).__name__
        hint = ""
        if name in {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError"}:
            hint = " (no connection to the Hub, or HF_HUB_OFFLINE=1 is set)"
        elif name in {"GatedRepoError", "RepositoryNotFoundError"}:
            hint = " (check the repo id; gated models need --hf-token with access)"
        message = _one_line(str(exc), args.hf_token)
        print(
            f"tune download: error: cannot download {args.repo_id}{hint}: {name}: {message}",
            file=sys.stderr,
        )
        return 2
    print(f"Downloaded {args.repo_id} to {path}")
    return 0
