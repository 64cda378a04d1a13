"""Typed settings: config.yml (or CONFIG_FILE) < .env < environment variables.

The one place configuration is read. Every other module receives the section it needs.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import regex
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = Path("config.yml")
DEFAULT_ENV_FILE = Path(".env")


class Section(BaseModel):
    """A config section: unknown keys are typos and stop start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AppSettings(Section):
    host: str = "127.0.0.1"
    """Address uvicorn binds."""
    port: int = Field(8000, ge=1, le=65535)
    """Port uvicorn binds."""
    root_path: str = ""
    """ASGI root_path when served behind a proxy under a prefix."""


_QUANTIZATION_DTYPES = {"bf16": "bfloat16", "fp16": "float32", "int8": "float32"}
"""The activations' dtype each quantization runs with; `model.dtype` may only agree."""


class ModelSettings(Section):
    name: str = "models/smollm2-135m-instruct"
    """Hub id (e.g. google/gemma-3-270m-it), local folder, or folder holding `gguf_file`."""
    served_name: str | None = None
    """Name shown to clients; defaults to the hub id, or the folder's name for a local path."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    gguf_file: str | None = None
    """GGUF file inside `name` to load (de-quantised on load; slow: prefer `make model`)."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    """auto | cpu | cuda | cuda:N | mps."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: float32 on CPU, bfloat16 (or float16) on GPU."""
    device_map: str | dict[str, Any] | None = None
    """accelerate device map (e.g. "auto") to spread a large model over several GPUs."""
    trust_remote_code: bool = False
    """Run model code shipped in the repository. Off unless you trust it."""
    max_tokens: int = Field(1024, ge=1)
    """Upper bound of `max_tokens` a request may ask for."""
    default_max_tokens: int = Field(256, ge=1)
    """`max_tokens` when a request gives none."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    """0 disables top-k."""
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    context_length: int | None = Field(None, ge=16)
    """Override the context window read from the model's config."""
    system_prompt_file: Path | None = Path("prompts/system.txt")
    """Default system prompt for chats that send none (only for templates that accept one)."""
    warmup: bool = True
    """Run a short generation before reporting healthy."""
    cpu_onednn_linear: bool = True
    """On CPU, pack float32 Linear weights for oneDNN at load: 2-3x faster than torch's default MKL path."""
    quantization: Literal["none", "bf16", "fp16", "int8"] = "none"
    """Cheaper weights, for slightly different answers (figures in bench/README.md). none: as
    `dtype` says (float32 on CPU). bf16: the whole model in bfloat16, the same as `dtype:
    bfloat16`. fp16, int8 (CPU only): the Linear layers' weights in float16, or in int8 with a
    scale per output channel, activations in float32. Greedy output is promised to be the same
    alone as in any batch only with none."""

    @model_validator(mode="after")
    def _quantization_fits_dtype(self) -> ModelSettings:
        wanted = _QUANTIZATION_DTYPES.get(self.quantization)
        if wanted is not None and self.dtype not in ("auto", wanted):
            raise ValueError(
                f"model.quantization {self.quantization} runs the model in {wanted}; "
                f"model.dtype {self.dtype} contradicts it (leave dtype auto)"
            )
        if self.quantization in ("fp16", "int8") and (self.device not in ("auto", "cpu") or self.device_map):
            raise ValueError(f"model.quantization {self.quantization} has CPU kernels only: use model.device cpu")
        return self

    def requested_dtype(self) -> str:
        """`dtype`, or where it is auto the dtype `quantization` runs in (auto for none)."""
        if self.dtype != "auto":
            return self.dtype
        return _QUANTIZATION_DTYPES.get(self.quantization, "auto")

    def resolved_served_name(self) -> str:
        if self.served_name:
            return self.served_name
        path = Path(self.name)
        return path.name if path.exists() else self.name


class EngineSettings(Section):
    max_queue: int = Field(64, ge=1)
    """Requests allowed to wait; beyond it: 503 overloaded."""
    queue_timeout_s: float = Field(60.0, gt=0)
    """A request waiting longer than this for the engine gets 503."""
    request_timeout_s: float = Field(300.0, gt=0)
    """A generation running longer than this is stopped: 504."""
    shutdown_grace_s: float = Field(10.0, ge=0)
    """On shutdown, time given to running generations before they are cut."""
    sse_ping_s: float = Field(15.0, gt=0)
    """Keep-alive comment interval on SSE streams."""
    max_batch_size: int = Field(32, ge=1)
    """Requests decoded together in one forward pass; 1 turns batching off."""
    prefix_cache_mb: int = Field(256, ge=0)
    """KV of recently finished sequences kept (least recently used out), so that a prompt that
    extends one (a chat's next turn) prefills only its new tokens; 0 turns it off."""
    compile: bool = False
    """Compile the decoding step with torch.compile during start-up (/health stays `loading`
    until done): fewer, fused operators per step. Off: every step runs eagerly."""
    compile_cache_dir: Path = Path(".cache/torch-compile")
    """Where the compiled kernels are kept, so that a second start reuses them."""


class NamedKey(Section):
    """An API key with a name for logs and metrics; give the key itself or its SHA-256 (hex)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    key: SecretStr | None = Field(None, min_length=8)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    tokens_per_minute: int | None = Field(None, ge=0)
    """This key's token budget per minute (prompt + max_tokens reserved); overrides
    rate_limit.tokens_per_minute; 0: none for this key."""
    tokens_per_day: int | None = Field(None, ge=0)
    """Model tokens this key may use per UTC day; None or 0: no daily quota."""

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> NamedKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        return self


def key_name(index: int, entry: SecretStr | NamedKey) -> str:
    """A key's name in logs, metrics and usage: its own, or `key-<n>` for a plain key (n from 1)."""
    return entry.name if isinstance(entry, NamedKey) else f"key-{index}"


class SecuritySettings(Section):
    api_keys: list[SecretStr | NamedKey] = []
    """Accepted API keys: plain strings or {name, key} / {name, key_sha256}. Empty: no auth."""
    allow_unauthenticated: bool = False
    """Allow binding a non-loopback address with no API key configured."""
    protect_metrics: bool = False
    """Require an API key for /metrics too."""
    max_prompt_chars: int = Field(32_000, ge=1)
    """Longest prompt (or total of a chat turn's new messages) accepted: 413 beyond."""
    max_body_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body accepted: 413 beyond."""
    admin_keys: list[str] = []
    """Names of keys that may read any key's usage (GET /v1/usage?key=NAME)."""

    def key_names(self) -> list[str]:
        return [key_name(index, entry) for index, entry in enumerate(self.api_keys, start=1)]

    @model_validator(mode="after")
    def _admins_are_keys(self) -> SecuritySettings:
        unknown = sorted(set(self.admin_keys) - set(self.key_names()))
        if unknown:
            raise ValueError(f"admin_keys names no configured key: {', '.join(unknown)}")
        return self


class RateLimitSettings(Section):
    enabled: bool = True
    requests_per_minute: float = Field(120.0, gt=0)
    """Sustained rate: the bucket refills at this many requests per minute."""
    burst_size: int = Field(30, ge=1)
    """Bucket capacity: requests allowed at once after a quiet spell."""
    tokens_per_minute: int = Field(0, ge=0)
    """Model tokens per minute per caller (prompt + max_tokens reserved at admission, the
    unused rest returned); also the token bucket's capacity. 0: no token budget."""
    trust_forwarded_for: bool = False
    """Take the client IP from X-Forwarded-For (only behind a proxy you control)."""


class CacheSettings(Section):
    enabled: bool = True
    size: int = Field(1024, ge=1)
    """Responses kept; the least recently used goes first."""
    ttl_seconds: float = Field(600.0, gt=0)
    """A cached response expires this long after it was stored."""
    deterministic_only: bool = True
    """Cache only requests whose answer is fixed: temperature 0 or a given seed."""


PII_ENTITIES = ("email", "phone", "credit_card", "us_ssn", "ip_address")


class PIIEntitySettings(Section):
    email: bool = True
    phone: bool = True
    credit_card: bool = True
    """Card numbers that pass the Luhn check."""
    us_ssn: bool = True
    ip_address: bool = True
    """IPv4 and IPv6 addresses."""


class PIISettings(Section):
    enabled: bool = True
    redact_input: bool = True
    """Redact prompts and messages before the model, the cache and any log see them."""
    redact_output: bool = True
    """Redact generated text, streams included."""
    mode: Literal["redact", "block"] = "redact"
    """redact: replace with [EMAIL] etc.; block: refuse input containing PII with 400."""
    entities: PIIEntitySettings = PIIEntitySettings()
    custom_patterns: dict[str, str] = {}
    """Extra patterns, name -> regex; matches become [NAME]."""

    @field_validator("custom_patterns")
    @classmethod
    def _valid_patterns(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            if not regex.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,39}", name):
                raise ValueError(f"pattern name {name!r} must be a letter then letters, digits or _")
            if name.lower() in PII_ENTITIES:
                raise ValueError(f"pattern name {name!r} is a built-in entity")
            try:
                compiled = regex.compile(pattern)
            except regex.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regex: {exc}") from None
            if compiled.match(""):
                raise ValueError(f"pattern {name!r} matches the empty string")
        return patterns


class ChatHistorySettings(Section):
    ttl_seconds: float = Field(3600.0, gt=0)
    """A session is forgotten this long after its last use."""
    max_sessions: int = Field(10_000, ge=1)
    """Sessions kept at once; the least recently used goes first."""
    max_messages: int = Field(200, ge=2)
    """Messages kept per session; the oldest go first."""


class TemplatesSettings(Section):
    dir: Path = Path("prompts/templates")
    """Directory of prompt templates (`*.yml`); a broken file stops start-up."""


class IdempotencySettings(Section):
    enabled: bool = True
    """Honour `Idempotency-Key` on generating POSTs: a repeat gets the stored answer."""
    ttl_seconds: float = Field(86400.0, gt=0)
    """How long a stored answer is replayed."""
    wait: bool = False
    """A repeat while the first still runs waits for its answer instead of a 409."""
    max_entries: int = Field(10_000, ge=1)
    """Answers kept at once in memory; the oldest go first (Redis keeps each for its TTL)."""


class StateSettings(Section):
    """Where shared state lives: sessions, rate limits, token budgets, usage, the response cache,
    single flight and idempotency records."""

    backend: Literal["memory", "redis"] = "memory"
    """memory: this process only (one replica); redis: shared by every replica using `redis_url`."""
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    """redis://[user:password@]host:port/db, or rediss:// for TLS. Secret: it may hold a password."""
    key_prefix: str = Field("llm:", pattern=r"^[A-Za-z0-9:._-]{0,64}$")
    """Prefix of every key written, so several deployments can share one Redis."""
    timeout_s: float = Field(0.5, gt=0, le=30)
    """Longest wait for one Redis call; past it the call counts as failed."""
    on_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    """Rate limits and token budgets while Redis is unreachable: fail_closed answers 503
    state_unavailable; fail_open lets requests through unlimited, without rate-limit headers
    (and logs a warning once per outage)."""
    lock_ttl_s: float = Field(15.0, gt=0)
    """A chat turn's session lock, and the lease of a generation that identical requests on other
    replicas wait for, expire this long after their holder last renewed them, so a crashed
    replica frees the session, and those requests, within this time."""


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True
    log_prompts: bool = False
    """Log prompts and outputs (PII-redacted) with each finished generation."""


class PlaygroundSettings(Section):
    enabled: bool = True
    """Serve the browser chat page at /playground (and redirect / to it); off: both are 404."""


class Settings(BaseSettings):
    """Whole-service settings; nested keys in the environment use `__` (MODEL__NAME)."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        yaml_file=DEFAULT_CONFIG_FILE,
        frozen=True,
    )

    app: AppSettings = AppSettings()
    model: ModelSettings = ModelSettings()
    engine: EngineSettings = EngineSettings()
    security: SecuritySettings = SecuritySettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    cache: CacheSettings = CacheSettings()
    chat_history: ChatHistorySettings = ChatHistorySettings()
    pii: PIISettings = PIISettings()
    templates: TemplatesSettings = TemplatesSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    state: StateSettings = StateSettings()
    logging: LoggingSettings = LoggingSettings()
    playground: PlaygroundSettings = PlaygroundSettings()
    huggingface_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("HUGGINGFACE_TOKEN", "HF_TOKEN", "huggingface_token")
    )
    """Token for gated or private hub models. Never logged."""

    @field_validator("huggingface_token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _no_open_public_bind(self) -> Settings:
        if not self.security.api_keys and not self.security.allow_unauthenticated and not is_loopback(self.app.host):
            raise ValueError(
                f"app.host {self.app.host} is reachable from other machines but security.api_keys is empty; "
                "set security.api_keys or security.allow_unauthenticated: true"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, YamlConfigSettingsSource(settings_cls))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # A dual-stack socket reports IPv4 peers as ::ffff:127.0.0.1, which Python 3.11 calls non-loopback.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


class _ConfigLocation(BaseSettings):
    """Reads only CONFIG_FILE, so the YAML file itself can be chosen from env or .env."""

    model_config = SettingsConfigDict(env_file=DEFAULT_ENV_FILE, extra="ignore")
    config_file: Path = DEFAULT_CONFIG_FILE


class ConfigError(Exception):
    """Configuration that cannot be used; `str()` is one line naming the key."""


def load_settings(
    config_file: Path | None = None, env_file: Path | None = DEFAULT_ENV_FILE, **overrides: Any
) -> Settings:
    """Build settings from the given YAML and .env, raising ConfigError with one clear line."""
    try:
        yaml_file = config_file or _ConfigLocation(_env_file=env_file).config_file
        if yaml_file != DEFAULT_CONFIG_FILE and not yaml_file.is_file():
            raise ConfigError(f"config file not found: {yaml_file}")

        class BoundSettings(Settings):
            model_config = SettingsConfigDict(yaml_file=yaml_file, env_file=env_file)

        return BoundSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config error: {exc}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{key}: {message}" if error["loc"] else message)
    return "invalid configuration: " + "; ".join(parts)
