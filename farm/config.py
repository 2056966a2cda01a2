"""The farm's settings: one object, built by each entry point from FARM_* variables and CLI flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import Mapping

# ComfyUI's folder types under the models folder (the ones the farm's nodes read).
MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a farm process needs to know; defaults are the single-machine values."""

    data_dir: Path
    models_dir: Path
    output_dir: Path
    input_dir: Path
    temp_dir: Path
    database_url: str
    # None means "start or use the embedded Redis" (farm up); every other process gets a URL.
    broker_url: str | None
    events_url: str | None
    host: str = "127.0.0.1"
    port: int = 8188
    web_processes: int = 2
    web_threads: int = 16
    max_upload_bytes: int = 100 * 1024 * 1024
    heartbeat_seconds: float = 2.0
    worker_timeout_seconds: float = 15.0
    dispatch_timeout_seconds: float = 30.0
    max_attempts: int = 3
    # SIGTERM drains a worker: its running prompt may finish within this many seconds; past it
    # the prompt is put back in the queue (its client is sent nothing final) and the worker exits.
    stop_grace_seconds: float = 30.0
    # A prompt running longer is interrupted and ends in error (type Timeout); None = no limit.
    prompt_timeout_seconds: float | None = None
    # A worker that loses or times out this many prompts in a row locks itself.
    lock_after_failures: int = 3
    # Model affinity: an idle worker may take, among the first `affinity_lookahead` prompts it can
    # run, one whose checkpoint it has loaded, but never past a front prompt and never making a
    # prompt wait longer than `affinity_max_wait_seconds` for it. 0 turns affinity off.
    affinity_lookahead: int = 16
    affinity_max_wait_seconds: float = 30.0
    # Labels of this worker (`farm worker --tags`), matched against what batches require.
    worker_tags: tuple[str, ...] = ()
    # Extra node modules (importable names, each with a NODES tuple), loaded by web and workers.
    node_modules: tuple[str, ...] = ()
    # Show every child's full log (Celery banner, migrations) instead of the start summary.
    verbose: bool = False
    history_max_items: int = 10000
    # Ended prompts (history entries, cancelled prompts, whole ended batches) older than this many
    # days are deleted from the database, a bounded batch at a time; None keeps them forever.
    # Their output files stay in storage (a bucket lifecycle rule or a cron job ages those).
    history_retention_days: float | None = None
    # Workers yield the CPU to the API on a shared machine (as render farm agents do).
    worker_nice: int = 5
    # Bytes of loaded models a worker keeps on its device; None = 80% of the free memory at start.
    model_cache_bytes: int | None = None
    # ComfyUI's --enable-cors-header: the allowed origin ("*" for any); None keeps the origin check.
    enable_cors_header: str | None = None
    # torch.compile of the worker's UNets, compiled in the background per shape bucket while the
    # eager UNet serves: "off" | "default" | "reduce-overhead" | "max-autotune". "off" by default
    # (safe on CPU workers); GPU workers should use "reduce-overhead" (CUDA graphs).
    compile_unet: str = "off"
    # channels_last memory format for UNets and VAEs; applied on CUDA devices only.
    channels_last: bool = True
    # ComfyUI's --preview-method for sampling previews: "none" (no binary frames), or any other
    # method, rendered as the cheap latent2rgb projection. A prompt may ask with extra_data.
    preview_method: str = "none"
    # WebSockets one web process holds; each holds a thread, on top of web_threads for HTTP.
    web_sockets: int = 1000
    # API keys: "on" (every request needs one), "off" (none needed: the local user may do
    # everything, as in ComfyUI), "auto": off when listening on loopback only, on otherwise.
    auth: str = "auto"
    # The most cells (prompts) one batch may hold.
    max_batch_cells: int = 1_000_000
    # Times a batch cell that failed for a reason not its own (out of memory, timeout) runs again.
    cell_retries: int = 3
    # A worker serves its Prometheus metrics on this port plus its GPU index (0: off), on this address.
    worker_metrics_port: int = 0
    worker_metrics_addr: str = "127.0.0.1"
    # Signs the dashboard's session cookies; None: one made and kept in the data folder (set the
    # same value on every web host of a cluster).
    secret_key: str | None = None
    # Dashboard cookies only over HTTPS ("auto": when the request came over HTTPS).
    cookie_secure: str = "auto"
    # Celery task events (what Flower shows); they cost broker traffic for every prompt.
    celery_events: bool = False
    # Where inputs, outputs and temp files live: None for the local folders above, or
    # "s3://bucket/prefix" for an S3-compatible store (credentials: the usual AWS variables/files).
    storage_url: str | None = None
    s3_endpoint_url: str | None = None  # MinIO, Ceph, R2 ...; None for AWS
    s3_region: str | None = None
    # /view answers with a redirect to a time-limited URL of the object instead of streaming it.
    s3_presign: bool = False
    s3_presign_seconds: int = 3600
    # The build this process runs (an image tag, a commit): shown after the version in /api/workers,
    # so a rolling upgrade's mix of builds is visible even at one package version.
    build: str | None = None
    # Checkpoints (names in the checkpoints folder) a worker loads before it takes its first prompt.
    preload: tuple[str, ...] = ()
    # Coalescing (farm.graph.coalesce): the most prompts a worker samples in one batch (None: what
    # its memory holds; 1: off), how long it may wait for a group to fill, and how it samples one
    # ("auto": exact on the CPU, batched on GPUs; "exact"; "batched").
    coalesce_max: int | None = None
    coalesce_wait_ms: float = 20.0
    coalesce_mode: str = "auto"

    @property
    def version(self) -> str:
        """The farm's version, with the build when one is set: "0.1.0" or "0.1.0+4f2a9c1"."""
        from farm import __version__

        return f"{__version__}+{self.build}" if self.build else __version__

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need an API key: `auth`, with "auto" on unless listening on loopback only."""
        if self.auth == "auto":
            return not loopback_only(self.host)
        return self.auth == "on"

    @property
    def embedded_redis_socket(self) -> Path:
        return self.data_dir / "redis" / "redis.sock"

    def with_overrides(self, **changes) -> "Settings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _path(value: str | os.PathLike) -> Path:
    return Path(value).expanduser().resolve()


def load_settings(env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Build the settings from `env` (default os.environ); keyword overrides (CLI flags) win.

    Folder overrides given as `data_dir` / `models_dir` move the folders derived from them
    unless those are set explicitly too.
    """
    env = os.environ if env is None else env
    get = lambda name, default=None: overrides.get(name) or env.get("FARM_" + name.upper()) or default  # noqa: E731

    data_dir = _path(get("data_dir", "./farm-data"))
    models_dir = _path(get("models_dir", "./models"))
    output_dir = _path(get("output_dir", data_dir / "output"))
    input_dir = _path(get("input_dir", data_dir / "input"))
    temp_dir = _path(get("temp_dir", data_dir / "temp"))
    database_url = get("database_url", f"sqlite:///{data_dir / 'farm.db'}")
    broker_url = get("broker_url")
    events_url = get("events_url")
    if events_url is None and broker_url and broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        events_url = broker_url

    def number(name, cast, default):
        value = overrides.get(name)
        if value is None:
            raw = env.get("FARM_" + name.upper())
            value = cast(raw) if raw not in (None, "") else default
        return value

    return Settings(
        data_dir=data_dir,
        models_dir=models_dir,
        output_dir=output_dir,
        input_dir=input_dir,
        temp_dir=temp_dir,
        database_url=database_url,
        broker_url=broker_url,
        events_url=events_url,
        host=get("host", "127.0.0.1"),
        port=number("port", int, 8188),
        web_processes=number("web_processes", int, min(2, os.cpu_count() or 1)),
        web_threads=number("web_threads", int, 16),
        max_upload_bytes=number("max_upload_bytes", int, 100 * 1024 * 1024),
        heartbeat_seconds=number("heartbeat_seconds", float, 2.0),
        worker_timeout_seconds=number("worker_timeout_seconds", float, 15.0),
        dispatch_timeout_seconds=number("dispatch_timeout_seconds", float, 30.0),
        max_attempts=number("max_attempts", int, 3),
        stop_grace_seconds=number("stop_grace_seconds", float, 30.0),
        prompt_timeout_seconds=number("prompt_timeout_seconds", _positive_or_none, None),
        lock_after_failures=number("lock_after_failures", int, 3),
        affinity_lookahead=number("affinity_lookahead", int, 16),
        affinity_max_wait_seconds=number("affinity_max_wait_seconds", float, 30.0),
        worker_tags=number("worker_tags", names_list, ()),
        node_modules=number("node_modules", names_list, ()),
        verbose=number("verbose", _flag, False),
        history_max_items=number("history_max_items", int, 10000),
        history_retention_days=number("history_retention_days", _positive_or_none, None),
        worker_nice=number("worker_nice", int, 5),
        model_cache_bytes=number("model_cache_bytes", int, None),
        enable_cors_header=get("enable_cors_header"),
        compile_unet=_compile_mode(get("compile_unet", "off")),
        channels_last=number("channels_last", _flag, True),
        preview_method=get("preview_method", "none"),
        web_sockets=number("web_sockets", int, 1000),
        auth=_auth_mode(get("auth", "auto")),
        max_batch_cells=number("max_batch_cells", int, 1_000_000),
        cell_retries=number("cell_retries", int, 3),
        worker_metrics_port=number("worker_metrics_port", int, 0),
        worker_metrics_addr=get("worker_metrics_addr", "127.0.0.1"),
        secret_key=get("secret_key"),
        cookie_secure=get("cookie_secure", "auto"),
        celery_events=number("celery_events", _flag, False),
        storage_url=_storage_url(get("storage_url")),
        s3_endpoint_url=get("s3_endpoint_url"),
        s3_region=get("s3_region"),
        s3_presign=number("s3_presign", _flag, False),
        s3_presign_seconds=number("s3_presign_seconds", int, 3600),
        build=get("build"),
        preload=number("preload", names_list, ()),
        coalesce_max=number("coalesce_max", int, None),
        coalesce_wait_ms=number("coalesce_wait_ms", float, 20.0),
        coalesce_mode=_coalesce_mode(get("coalesce_mode", "auto")),
    )


AUTH_MODES = ("auto", "on", "off")


def _storage_url(value: str | None) -> str | None:
    if not value:
        return None
    if not value.startswith("s3://") or len(value) <= len("s3://") or value[5] == "/":
        raise ValueError(f"FARM_STORAGE_URL must look like s3://bucket/prefix, not {value!r}")
    return value


def loopback_only(host: str) -> bool:
    """Whether listening on `host` reaches this machine only."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def _auth_mode(value) -> str:
    mode = str(value).strip().lower()
    mode = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(mode, mode)
    if mode not in AUTH_MODES:
        raise ValueError(f"FARM_AUTH must be one of {', '.join(AUTH_MODES)}, not {value!r}")
    return mode


COMPILE_UNET_MODES = ("off", "default", "reduce-overhead", "max-autotune")
COALESCE_MODES = ("auto", "exact", "batched")


def _coalesce_mode(value: str) -> str:
    mode = str(value).strip().lower()
    if mode not in COALESCE_MODES:
        raise ValueError(f"FARM_COALESCE_MODE must be one of {', '.join(COALESCE_MODES)}, not {value!r}")
    return mode


def _compile_mode(value: str) -> str:
    mode = str(value).strip().lower()
    if mode not in COMPILE_UNET_MODES:
        raise ValueError(f"FARM_COMPILE_UNET must be one of {', '.join(COMPILE_UNET_MODES)}, not {value!r}")
    return mode


def names_list(value) -> tuple[str, ...]:
    """A comma-separated list (or a list) of names, blanks dropped."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item and item.strip())


def _positive_or_none(value) -> float | None:
    number = float(value)
    return number if number > 0 else None


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


def settings_environment(settings: Settings) -> dict[str, str]:
    """The FARM_* variables that reproduce `settings` in a child process (farm up)."""
    env = {
        "FARM_DATA_DIR": str(settings.data_dir),
        "FARM_MODELS_DIR": str(settings.models_dir),
        "FARM_OUTPUT_DIR": str(settings.output_dir),
        "FARM_INPUT_DIR": str(settings.input_dir),
        "FARM_TEMP_DIR": str(settings.temp_dir),
        "FARM_DATABASE_URL": settings.database_url,
        "FARM_HOST": settings.host,
        "FARM_PORT": str(settings.port),
        "FARM_WEB_PROCESSES": str(settings.web_processes),
        "FARM_WEB_THREADS": str(settings.web_threads),
        "FARM_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
        "FARM_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "FARM_WORKER_TIMEOUT_SECONDS": str(settings.worker_timeout_seconds),
        "FARM_DISPATCH_TIMEOUT_SECONDS": str(settings.dispatch_timeout_seconds),
        "FARM_MAX_ATTEMPTS": str(settings.max_attempts),
        "FARM_STOP_GRACE_SECONDS": str(settings.stop_grace_seconds),
        "FARM_LOCK_AFTER_FAILURES": str(settings.lock_after_failures),
        "FARM_AFFINITY_LOOKAHEAD": str(settings.affinity_lookahead),
        "FARM_AFFINITY_MAX_WAIT_SECONDS": str(settings.affinity_max_wait_seconds),
        "FARM_VERBOSE": "1" if settings.verbose else "0",
        "FARM_HISTORY_MAX_ITEMS": str(settings.history_max_items),
        "FARM_WORKER_NICE": str(settings.worker_nice),
        "FARM_COMPILE_UNET": settings.compile_unet,
        "FARM_CHANNELS_LAST": "1" if settings.channels_last else "0",
    }
    if settings.history_retention_days is not None:
        env["FARM_HISTORY_RETENTION_DAYS"] = str(settings.history_retention_days)
    if settings.prompt_timeout_seconds is not None:
        env["FARM_PROMPT_TIMEOUT_SECONDS"] = str(settings.prompt_timeout_seconds)
    if settings.worker_tags:
        env["FARM_WORKER_TAGS"] = ",".join(settings.worker_tags)
    if settings.node_modules:
        env["FARM_NODE_MODULES"] = ",".join(settings.node_modules)
    if settings.model_cache_bytes is not None:
        env["FARM_MODEL_CACHE_BYTES"] = str(settings.model_cache_bytes)
    if settings.broker_url:
        env["FARM_BROKER_URL"] = settings.broker_url
    if settings.events_url:
        env["FARM_EVENTS_URL"] = settings.events_url
    if settings.enable_cors_header:
        env["FARM_ENABLE_CORS_HEADER"] = settings.enable_cors_header
    env["FARM_PREVIEW_METHOD"] = settings.preview_method
    env["FARM_WEB_SOCKETS"] = str(settings.web_sockets)
    env["FARM_AUTH"] = settings.auth
    env["FARM_MAX_BATCH_CELLS"] = str(settings.max_batch_cells)
    env["FARM_CELL_RETRIES"] = str(settings.cell_retries)
    env["FARM_WORKER_METRICS_PORT"] = str(settings.worker_metrics_port)
    env["FARM_WORKER_METRICS_ADDR"] = settings.worker_metrics_addr
    env["FARM_COOKIE_SECURE"] = settings.cookie_secure
    env["FARM_CELERY_EVENTS"] = "1" if settings.celery_events else "0"
    if settings.secret_key:
        env["FARM_SECRET_KEY"] = settings.secret_key
    for name in ("storage_url", "s3_endpoint_url", "s3_region"):
        if getattr(settings, name):
            env["FARM_" + name.upper()] = getattr(settings, name)
    if settings.build:
        env["FARM_BUILD"] = settings.build
    if settings.preload:
        env["FARM_PRELOAD"] = ",".join(settings.preload)
    if settings.coalesce_max is not None:
        env["FARM_COALESCE_MAX"] = str(settings.coalesce_max)
    env["FARM_COALESCE_WAIT_MS"] = str(settings.coalesce_wait_ms)
    env["FARM_COALESCE_MODE"] = settings.coalesce_mode
    env["FARM_S3_PRESIGN"] = "1" if settings.s3_presign else "0"
    env["FARM_S3_PRESIGN_SECONDS"] = str(settings.s3_presign_seconds)
    return env


def missing_preloads(settings: Settings) -> list[str]:
    """The names in `settings.preload` that are not files inside the checkpoints folder."""
    root = (settings.models_dir / "checkpoints").resolve()
    return [name for name in settings.preload
            if not (root / name).resolve().is_relative_to(root) or not (root / name).is_file()]
