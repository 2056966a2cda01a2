"""The `farm` command: up | web | worker | db upgrade."""

from __future__ import annotations

import argparse
import sys

from farm.config import load_settings, missing_preloads, names_list
from farm.graph.progress import PREVIEW_METHODS
from farm.logs import configure_logging


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


def _add_auth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--auth", choices=("auto", "on", "off"),
                        help="API keys: on, off, or auto (off on loopback only, on otherwise); FARM_AUTH, default auto")


def _add_preload(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preload", type=names_list, metavar="NAME[,NAME]",
                        help="checkpoints each worker loads before its first prompt, so that prompt does not "
                             "wait for them; FARM_PRELOAD")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", default=None,
                        help="show every process's full log (Celery's banner, migrations) instead of the "
                             "start summary; FARM_VERBOSE=1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="A render farm that speaks ComfyUI's API.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole farm on this machine (web, workers, embedded Redis)")
    _add_common(up)
    up.add_argument("--cpu", action="store_true", help="one CPU worker even when GPUs are present")
    _add_cors(up)
    _add_auth(up)
    _add_previews(up)
    _add_preload(up)
    _add_verbose(up)

    web = commands.add_parser("web", help="run the web server (API)")
    _add_common(web)
    _add_cors(web)
    _add_auth(web)

    worker = commands.add_parser("worker", help="run a worker: one process per GPU, or one on the CPU")
    _add_common(worker)
    device = worker.add_mutually_exclusive_group(required=True)
    device.add_argument("--gpus", metavar="all|ID,ID",
                        help="one worker process per GPU: all visible GPUs (CUDA_VISIBLE_DEVICES, else "
                             "nvidia-smi -L) or the listed ids among them; with several, each is restarted "
                             "when it dies")
    device.add_argument("--gpu", metavar="ID", help="one worker on this GPU (an index or a GPU-/MIG- UUID)")
    device.add_argument("--cpu", action="store_true", help="one worker on the CPU")
    worker.add_argument("--name", help="worker name (default <host>-gpu<N> or <host>-cpu); with --gpus the base "
                                       "of the names: <name>-gpu<N>")
    worker.add_argument("--tags", type=names_list, help="comma-separated labels of this worker; FARM_WORKER_TAGS")
    _add_preload(worker)
    worker.add_argument("--restart", action="store_true",
                        help="run the worker as a child process and start it again when it dies (always so with "
                             "several GPUs; farm up uses it)")
    _add_previews(worker)
    _add_verbose(worker)

    from farm import cli_batch, cli_ops, cli_teams

    cli_ops.add_commands(commands)
    cli_teams.add_commands(commands)
    cli_batch.add_commands(commands)

    flower = commands.add_parser("flower", help="Flower, Celery's monitor, on the farm's broker (pip install "
                                                "'comfy-farm[flower]'; workers need FARM_CELERY_EVENTS=1 for tasks)")
    flower.add_argument("--address", default="127.0.0.1", help="address Flower listens on (default 127.0.0.1)")
    flower.add_argument("--port", dest="flower_port", type=int, default=5555, help="port Flower listens on (default 5555)")
    flower.add_argument("--basic-auth", metavar="USER:PASSWORD",
                        help="protect Flower and its API (without it Flower answers its API only when "
                             "FLOWER_UNAUTHENTICATED_API=true)")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply the migrations")
    _add_common(upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    settings = load_settings(data_dir=getattr(args, "data_dir", None), models_dir=getattr(args, "models_dir", None),
                             host=getattr(args, "host", None), port=getattr(args, "port", None),
                             enable_cors_header=getattr(args, "enable_cors_header", None),
                             preview_method=getattr(args, "preview_method", None),
                             worker_tags=getattr(args, "tags", None), verbose=getattr(args, "verbose", None),
                             auth=getattr(args, "auth", None), preload=getattr(args, "preload", None))
    configure_logging(settings.verbose)

    if args.command in ("up", "web", "worker") and not _storage_ready(settings, args.command):
        return 2
    if args.command in ("up", "worker") and missing_preloads(settings):
        print(f"farm {args.command}: error: --preload: no such checkpoint in {settings.models_dir / 'checkpoints'}: "
              f"{', '.join(missing_preloads(settings))}", file=sys.stderr)
        return 2
    if args.command == "up":
        from farm.supervisor import run_farm
        from farm.worker.device import visible_gpus

        return run_farm(settings, [] if args.cpu else visible_gpus())
    if args.command == "web":
        from farm.summary import auth_line
        from web.server import serve

        print(f"farm web on {settings.host}:{settings.port}; auth {auth_line(settings)}", file=sys.stderr)
        serve(settings)
        return 0
    if args.command == "worker":
        return _worker(args, settings)
    if args.command in ("workers", "dispatch"):
        from farm import cli_ops

        return cli_ops.run(args, settings)
    if args.command in ("submit", "batch"):
        from farm import cli_batch

        return cli_batch.run(args, settings)
    if args.command in ("teams", "keys"):
        from farm import cli_teams

        return cli_teams.run(args, settings)
    if args.command == "flower":
        return _flower(args, settings)
    if args.command == "db":
        from farm.db.migrate import upgrade

        upgrade(settings.database_url)
        print(f"database at head: {settings.database_url}")
        return 0
    return 2


def _storage_ready(settings, command: str) -> bool:
    """Whether the store the settings name takes files; said and refused at start otherwise (a
    missing bucket or denied access must not wait for the first image to be found out)."""
    from farm.storage import StorageUnavailable, make_storage

    try:
        make_storage(settings).check_available()
    except StorageUnavailable as error:
        print(f"farm {command}: error: {error}", file=sys.stderr)
        return False
    except ImportError:
        print(f"farm {command}: error: FARM_STORAGE_URL names S3 but boto3 is not installed: "
              "pip install 'comfy-farm[s3]'", file=sys.stderr)
        return False
    return True


def _flower(args, settings) -> int:
    """Flower with the farm's Celery app (its broker, its queues); it runs until stopped."""
    try:
        import flower  # noqa: F401 - only to say what to install
    except ImportError:
        print("farm flower: Flower is not installed: pip install 'comfy-farm[flower]'", file=sys.stderr)
        return 2
    from farm.queue.celery_app import make_celery

    app = make_celery(settings)
    argv = ["flower", f"--address={args.address}", f"--port={args.flower_port}"]
    if args.basic_auth:
        argv.append(f"--basic_auth={args.basic_auth}")
    app.start(argv)
    return 0


def _worker(args, settings) -> int:
    """One device: this process is the worker. Several GPUs: it supervises one worker per GPU."""
    from farm.worker.device import GpuSelectionError, check_gpu, select_gpus, visible_gpus

    try:
        if args.cpu:
            gpus = [None]
        elif args.gpu is not None:
            gpus = [check_gpu(args.gpu)]
        else:
            gpus = select_gpus(args.gpus, visible_gpus())
    except GpuSelectionError as error:
        print(f"farm worker: error: {error}", file=sys.stderr)
        return 2
    from farm.worker.main import default_worker_name, run_worker

    # With --gpus the name is always a base, so a unit file names workers alike on every host.
    names = [default_worker_name(gpu, args.name) if args.gpus or not args.name else args.name for gpu in gpus]
    if len(gpus) > 1 or args.restart:
        from farm.worker.supervisor import supervise_gpus

        return supervise_gpus(settings, gpus, names=names)
    run_worker(settings, gpus[0], names[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
