"""The `farm` command: up | web | worker | db upgrade."""

from __future__ import annotations

import argparse
import logging
import sys

from farm.config import load_settings
from farm.graph.progress import PREVIEW_METHODS


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data folder (database, outputs); FARM_DATA_DIR, default ./farm-data")
    parser.add_argument("--models-dir", help="models folder in ComfyUI's layout; FARM_MODELS_DIR, default ./models")
    parser.add_argument("--host", help="address to listen on; FARM_HOST, default 127.0.0.1")
    parser.add_argument("--port", type=int, help="port to listen on; FARM_PORT, default 8188")


def _add_cors(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--enable-cors-header", nargs="?", const="*", metavar="ORIGIN",
                        help="answer cross-origin requests from ORIGIN (default *) instead of checking the "
                             "Origin header, as ComfyUI's flag does; FARM_ENABLE_CORS_HEADER")


def _add_previews(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preview-method", choices=PREVIEW_METHODS,
                        help="sampling previews as binary WebSocket frames, as ComfyUI's flag (every method but "
                             "none is rendered as latent2rgb); a prompt's extra_data.preview_method wins; "
                             "FARM_PREVIEW_METHOD, default none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="A render farm that speaks ComfyUI's API.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole farm on this machine (web, workers, embedded Redis)")
    _add_common(up)
    up.add_argument("--cpu", action="store_true", help="one CPU worker even when GPUs are present")
    _add_cors(up)
    _add_previews(up)

    web = commands.add_parser("web", help="run the web server (API)")
    _add_common(web)
    _add_cors(web)

    worker = commands.add_parser("worker", help="run one worker process")
    _add_common(worker)
    device = worker.add_mutually_exclusive_group(required=True)
    device.add_argument("--gpu", type=int, help="the GPU index this worker owns")
    device.add_argument("--cpu", action="store_true", help="run on the CPU")
    worker.add_argument("--name", help="worker name (default <host>-gpu<N> or <host>-cpu)")
    _add_previews(worker)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply the migrations")
    _add_common(upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(data_dir=args.data_dir, models_dir=args.models_dir, host=args.host, port=args.port,
                             enable_cors_header=getattr(args, "enable_cors_header", None),
                             preview_method=getattr(args, "preview_method", None))

    if args.command == "up":
        from farm.supervisor import run_farm
        from farm.worker.device import visible_gpu_count

        gpus = 0 if args.cpu else visible_gpu_count()
        return run_farm(settings, list(range(gpus)) or [None])
    if args.command == "web":
        from web.server import serve

        serve(settings)
        return 0
    if args.command == "worker":
        from farm.worker.main import run_worker

        run_worker(settings, None if args.cpu else args.gpu, args.name)
        return 0
    if args.command == "db":
        from farm.db.migrate import upgrade

        upgrade(settings.database_url)
        print(f"database at head: {settings.database_url}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
