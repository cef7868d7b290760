"""One way to reach files on any fsspec URL (a local path, file://, s3://, ...), and atomic writes.

S3 (and S3-compatible stores: MinIO, R2, Ceph): credentials come from the standard AWS chain
(environment, shared credentials file or profile, an instance role / IRSA / workload identity) and
are never passed, printed or stored by ganray. The endpoint override is the standard variable every
AWS SDK reads, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (unset: AWS itself); ganray passes it to
s3fs explicitly, so that it works whatever the installed botocore makes of it, and pyarrow (Ray
Train's storage) reads it itself. A location URL that carries credentials (`s3://KEY:SECRET@bucket`)
is refused: it would end up in logs, manifests and job.json.

Relative local paths (the path policy): outside a Ray job they mean what they mean in a shell,
relative to the working directory. In the driver of a job started by `ray job submit` they would
resolve inside the job's temporary copy of the working directory on the cluster (gitignored folders
such as ./registry are not uploaded; what is written there vanishes with the job), so they are
refused with a LocationError, unless the user names the directory they mean in
$GANRAY_SUBMIT_DIR (absolute; relative paths then resolve against it in every process).

Atomic writes: a reader sees either the old file or the complete new one, never a partial file.
On a local disk the bytes go to a temporary name in the same folder and are then renamed over
the target (rename is atomic within a filesystem). On an object store a single PUT is already
atomic: the object appears only once the upload completes, so the bytes go to the key directly.
Temporary names contain TEMP_MARKER, so that leftovers of a killed writer can be found and removed.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import socket
import threading
import uuid
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

TEMP_MARKER = ".tmp-"


# The endpoint override, in the order botocore itself reads them: the S3-specific one wins.
S3_ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

# The opt-in of the path policy: the absolute directory relative local paths mean in a submitted job.
SUBMIT_DIR_ENV = "GANRAY_SUBMIT_DIR"
# Ray's job supervisor sets this for the entrypoint process of a `ray job submit` job (the driver)
# and for nothing else: not for a driver started by hand, not for the job's tasks and actors.
RAY_JOB_DRIVER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


class LocationError(ValueError):
    """A location that cannot be used as given: a relative local path in a job started by
    `ray job submit` without $GANRAY_SUBMIT_DIR to say what it is relative to, or a URL that
    carries credentials."""


def s3_endpoint() -> str | None:
    """The S3 endpoint override (MinIO, R2, Ceph, a local test server), or None for AWS itself."""
    for name in S3_ENDPOINT_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None


# How long an S3 request may take before it fails, so that an endpoint that went away (or never
# answers) ends a job with an error instead of hanging it. Each request is tried S3_MAX_ATTEMPTS
# times by botocore's standard retry mode (backoff with jitter); s3fs's own retry loop is turned off,
# because it would multiply those attempts (5 x 5 by default, each waiting up to a 60 s read
# timeout: half an hour on an endpoint that accepts connections and never answers). The standard
# AWS_MAX_ATTEMPTS wins over the default here; the timeouts are ganray's own variables.
S3_MAX_ATTEMPTS_ENV = "AWS_MAX_ATTEMPTS"
S3_CONNECT_TIMEOUT_ENV = "GANRAY_S3_CONNECT_TIMEOUT_S"
S3_READ_TIMEOUT_ENV = "GANRAY_S3_READ_TIMEOUT_S"
S3_DEFAULT_MAX_ATTEMPTS = 3
S3_DEFAULT_CONNECT_TIMEOUT_S = 10.0
S3_DEFAULT_READ_TIMEOUT_S = 30.0  # between two socket reads, not for a whole transfer


def _env_number(name: str, default: float, kind: type = float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise LocationError(f"${name} must be a number, got {value!r}") from None
    if number <= 0:
        raise LocationError(f"${name} must be positive, got {value!r}")
    return number


def s3_client_settings() -> dict[str, Any]:
    """botocore Config settings for every S3 client ganray makes (timeouts and retries above)."""
    return {
        "connect_timeout": _env_number(S3_CONNECT_TIMEOUT_ENV, S3_DEFAULT_CONNECT_TIMEOUT_S),
        "read_timeout": _env_number(S3_READ_TIMEOUT_ENV, S3_DEFAULT_READ_TIMEOUT_S),
        "retries": {"mode": "standard",
                    "max_attempts": int(_env_number(S3_MAX_ATTEMPTS_ENV, S3_DEFAULT_MAX_ATTEMPTS, int))},
    }


def _storage_options(url: str) -> dict[str, Any]:
    if not url.startswith(("s3://", "s3a://")):
        return {}
    # No listing cache: jobs list folders that other processes are writing to.
    # No keys: s3fs (botocore) finds credentials through the standard AWS chain.
    options: dict[str, Any] = {"use_listings_cache": False, "config_kwargs": s3_client_settings()}
    endpoint = s3_endpoint()
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def is_remote(url: str) -> bool:
    """True for a URL with a scheme other than file:// (s3://, gs://, memory://, ...)."""
    return "://" in url and not url.startswith("file://")


def in_submitted_job() -> bool:
    """True in the driver of a job started by `ray job submit` (its entrypoint process)."""
    return RAY_JOB_DRIVER_ENV in os.environ


def _submit_dir() -> str | None:
    value = os.environ.get(SUBMIT_DIR_ENV)
    if not value:
        return None
    if not os.path.isabs(value):
        raise LocationError(f"${SUBMIT_DIR_ENV} must be an absolute directory, got {value!r}")
    if not os.path.isdir(value):
        raise LocationError(
            f"${SUBMIT_DIR_ENV} is {value!r}, which is not a directory on this node "
            f"({socket.gethostname()}): relative paths can resolve against the directory you submitted "
            "from only where the cluster shares that filesystem; use absolute shared paths or s3:// URLs")
    return value


# Object-store schemes whose URLs can carry keys before the bucket (pyarrow reads s3://KEY:SECRET@bucket).
# Not abfs://, where container@account is the address, not a credential.
_BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs")


def _check_no_credentials(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme in _BUCKET_SCHEMES and "@" in parts.netloc:
        raise LocationError(
            f"a {parts.scheme}:// location must not carry credentials (user:secret@ before the bucket): they "
            "would be written to logs, manifests and job.json. Give credentials through the standard "
            "AWS chain instead (environment variables, ~/.aws, an instance role)")


def absolute_location(url: str) -> str:
    """The path policy (module docstring): `url` in a form that means the same in every process.

    Remote URLs are returned as given (credentials in them are refused). A relative local path is
    joined to $GANRAY_SUBMIT_DIR when that is set, refused in the driver of a submitted job when it
    is not (LocationError), and made absolute against the working directory otherwise.
    """
    if is_remote(url):
        _check_no_credentials(url)
        return url
    path = os.path.expanduser(url.removeprefix("file://"))
    if os.path.isabs(path):
        return os.path.normpath(path)
    base = _submit_dir()
    if base is None and in_submitted_job():
        raise LocationError(
            f"{url!r} is a relative path, and this is a job started by `ray job submit`: it would resolve "
            "inside the job's temporary copy of the working directory on the cluster (gitignored folders "
            "such as ./registry are not uploaded, and what is written there is deleted with the job). "
            "Use an s3:// URL or an absolute path on storage every node shares; or, to resolve relative "
            "paths against the directory you submitted from (on a filesystem the cluster shares), submit "
            f"with --runtime-env-json '{{\"env_vars\": {{\"{SUBMIT_DIR_ENV}\": \"'$PWD'\"}}}}'")
    return os.path.abspath(os.path.join(base or os.getcwd(), path))


# fsspec imports a protocol's filesystem (s3fs -> aiobotocore -> aiohttp) on first use. Once, in the
# test suite, a Ray worker then failed every S3 write with "module aiohttp has no attribute
# http_exceptions": a module left half-initialised, as when two threads import it at once and meet
# in Python's import-deadlock avoidance (the likely cause, not a proven one). Looking the class up
# under one lock serialises that first import; afterwards it is a dictionary lookup.
_FILESYSTEM_IMPORT_LOCK = threading.Lock()


def _import_filesystem_class(url: str) -> None:
    with _FILESYSTEM_IMPORT_LOCK:
        fsspec.get_filesystem_class(urlsplit(url).scheme)


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a local path or any fsspec URL (the path policy applies)."""
    url = absolute_location(url)
    if is_remote(url):
        _import_filesystem_class(url)
    fs, path = fsspec.core.url_to_fs(url, **_storage_options(url))
    if getattr(fs, "protocol", None) and "s3" in fs.protocol:
        fs.retries = 1  # s3fs's own retry loop off: botocore retries (see S3_MAX_ATTEMPTS_ENV)
    return fs, path


def is_local(url: str) -> bool:
    return isinstance(url_to_fs(url)[0], LocalFileSystem)


def normalize_url(url: str) -> str:
    """An absolute form of `url` that means the same on every process: local paths become absolute
    (Ray workers do not share the driver's working directory; see absolute_location for relative
    paths in submitted jobs); remote URLs are kept as given, without a trailing slash."""
    url = absolute_location(url)
    return url.rstrip("/") if is_remote(url) else url


def join(url: str, *parts: str) -> str:
    return posixpath.join(url.rstrip("/"), *parts)


def temp_name(path: str) -> str:
    """A unique sibling name for `path` that `is_temp` recognises."""
    return f"{path}{TEMP_MARKER}{uuid.uuid4().hex[:12]}"


def is_temp(path: str) -> bool:
    return TEMP_MARKER in posixpath.basename(path.rstrip("/"))


def atomic_write(url: str, data: bytes) -> None:
    """Write `data` to `url` so that readers never see a partial file."""
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = temp_name(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def atomic_write_many(folder_url: str, files: dict[str, bytes]) -> None:
    """Write a folder of files (name -> bytes) so that each file appears whole.

    On a local disk the files are written into a temporary sibling folder that is then renamed
    into place (an existing `folder_url` is replaced). On an object store the files are PUT
    concurrently, each atomically.
    """
    fs, path = url_to_fs(folder_url)
    if isinstance(fs, LocalFileSystem):
        tmp = temp_name(path)
        os.makedirs(tmp)
        try:
            for name, data in files.items():
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(data)
            if os.path.exists(path):
                fs.rm(path, recursive=True)
            os.rename(tmp, path)
        except BaseException:
            fs.rm(tmp, recursive=True)
            raise
    else:
        fs.pipe({posixpath.join(path, name): data for name, data in files.items()})


def read_bytes(url: str) -> bytes:
    fs, path = url_to_fs(url)
    return fs.cat_file(path)


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def ls(url: str, detail: bool = False) -> list[Any]:
    """Entries directly under `url` ([] when it does not exist), as URLs of the same form as `url`
    (fsspec itself drops the s3:// prefix); with detail, fsspec info dicts with "name" as such a URL."""
    fs, path = url_to_fs(url)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    children = []
    for entry in entries:
        child = join(url, posixpath.basename(entry["name"].rstrip("/")))
        if child.rstrip("/") == url.rstrip("/"):
            continue  # some filesystems list a folder marker object as the folder itself
        children.append({**entry, "name": child} if detail else child)
    return children


def remove(url: str) -> None:
    """Remove a file or a folder tree; a missing path is not an error."""
    fs, path = url_to_fs(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The inverse of url_to_fs: a URL that another process can open."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def pyarrow_filesystem(fs: fsspec.AbstractFileSystem):
    """The same filesystem for pyarrow / ray.data.read_parquet (keeps this module's S3 settings)."""
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def sha256_hex(data: bytes) -> str:
    """The content hash ganray uses everywhere (shards, imported images, registry versions)."""
    return hashlib.sha256(data).hexdigest()


class UnsafePathError(ValueError):
    """A path read from a manifest that would leave its root (absolute, '..', a URL, empty)."""


def child(root: str, relpath: str) -> str:
    """`root` joined with `relpath`, a path read from a manifest, after checking that it names a
    file inside `root`: relative, no '..' or '.' parts, no scheme, no backslashes. Anything else is
    refused (UnsafePathError) and never read or deleted: a manifest is data, not an instruction."""
    if not isinstance(relpath, str) or not relpath or "\\" in relpath or "\x00" in relpath:
        raise UnsafePathError(f"unsafe path {relpath!r} in a manifest under {root}")
    parts = relpath.split("/")
    if (relpath.startswith("/") or "://" in relpath or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise UnsafePathError(f"unsafe path {relpath!r} in a manifest under {root}: "
                              "manifest paths must be relative and stay inside their folder")
    return join(root, relpath)


def create_exclusive(url: str, data: bytes) -> bool:
    """Create `url` with `data` unless it exists: True if this call created it, False (nothing
    written) if the name was taken. Readers never see the file partial. On a local disk the bytes
    go to a temporary file that is hard-linked to the name (a link fails if the name exists); on
    S3 it is one conditional PUT (If-None-Match: *). Version claims, decision-log entries and
    output leases are all taken this way."""
    fs, path = url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = temp_name(path)
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# S3 failures as messages: which location, which endpoint, what went wrong; never a credential.


class StorageAccessError(LocationError):
    """An s3:// location that cannot be used at all: wrong or missing credentials, a missing
    bucket, access denied, an endpoint that does not answer. Found before a job writes anything."""


def endpoint_words() -> str:
    """The S3 endpoint in use, for messages ("endpoint http://host:port" or "AWS S3"), without any
    user:password part an endpoint URL might carry."""
    endpoint = s3_endpoint()
    if not endpoint:
        return "AWS S3"
    parts = urlsplit(endpoint)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return f"endpoint {parts._replace(netloc=host).geturl()}"


def _s3_error_code(exc: BaseException) -> tuple[str | None, str]:
    """(error code, message) of a botocore ClientError found in `exc`'s chain, else (None, str(exc))."""
    for cause in exception_chain(exc):
        response = getattr(cause, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            error = response["Error"]
            return error.get("Code"), error.get("Message") or str(cause)
    return None, str(exc)


_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "TokenRefreshRequired", "InvalidClientTokenId"}
_CREDENTIAL_HINT = ("check the credentials ganray finds through the standard AWS chain (AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, an instance role)")


def check_reachable(url: str, what: str) -> None:
    """Refuse (StorageAccessError, naming `what`, the URL and the endpoint) an s3:// location this
    process cannot list: wrong or missing credentials, no such bucket, access denied, no answer.

    One small request (ListObjectsV2, at most one key under the location's prefix): the same
    permission every job needs anyway. Local paths and other schemes pass unchecked.
    """
    if not url.startswith(("s3://", "s3a://")):
        return
    fs, path = url_to_fs(url)
    bucket, _, prefix = path.partition("/")
    try:
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as e:  # noqa: BLE001 - every failure here means the location cannot be used
        code, _ = _s3_error_code(e)
        reason = f"bucket {bucket!r} does not exist" if code == "NoSuchBucket" else describe_failure(e)
        raise StorageAccessError(f"{what}: cannot use {url} ({endpoint_words()}): {reason}") from None


def describe_failure(exc: BaseException) -> str:
    """What went wrong in a storage request, in words (botocore's and pyarrow's messages name the
    endpoint, bucket and key, never a credential)."""
    code, message = _s3_error_code(exc)
    if code in _CREDENTIAL_CODES:
        return f"the credentials were refused ({code}: {message}); {_CREDENTIAL_HINT}"
    if code == "NoSuchBucket":
        return f"the bucket does not exist ({message})"
    if code in ("AccessDenied", "403", "Forbidden"):
        return f"access denied ({code}: {message}); {_CREDENTIAL_HINT}"
    if code is not None:
        return f"{code}: {message}"
    found = storage_error_in(exc)
    return f"{type(found or exc).__name__}: {found or exc}"


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it: __cause__, __context__, and what Ray wraps: a failed task's own
    exception (`cause`), Ray Train's `worker_failures` and `controller_failure`; each once."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [getattr(current, "cause", None), getattr(current, "controller_failure", None),  # Ray's wrappers
                 current.__cause__, current.__context__]
        todo += [e for e in getattr(current, "exceptions", None) or [] if isinstance(e, BaseException)]
        failures = getattr(current, "worker_failures", None)  # Ray Train: {rank: exception}
        if isinstance(failures, dict):
            todo += [e for e in failures.values() if isinstance(e, BaseException)]
    return [e for e in seen if isinstance(e, BaseException)]


def storage_error_in(exc: BaseException) -> BaseException | None:
    """The S3 error (botocore, s3fs, pyarrow) behind `exc`, if a storage request is what failed."""
    for cause in exception_chain(exc):
        module = type(cause).__module__
        if module.startswith(("botocore", "aiobotocore", "s3fs")):
            return cause
        if isinstance(cause, OSError) and "AWS Error" in str(cause):  # pyarrow's S3 filesystem
            return cause
    return None
