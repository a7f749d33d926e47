"""kdeploy's exception tree. Everything a user can cause ends as a KdeployError.

    KdeployError                 exit 1  (base: message + hint)
    ├── InventoryError           exit 3  bad inventory: file, field path, line, what to do
    ├── PrerequisiteError        exit 4  a tool/package missing on the machine running kdeploy
    ├── ArtifactError            exit 5  missing artifact, checksum mismatch
    │   └── ChecksumMismatch
    ├── TransportError           exit 6  host unreachable, auth failed, command failed
    ├── PreflightError           exit 7  a host is not fit (swap, ports, OS ...)
    ├── LabError                 exit 8  the local lab
    ├── VerifyError              exit 9  a post-deploy check failed
    └── ApplyError               exit 10 a phase failed on some hosts (what ran is journaled)

The CLI prints `error: <message>` and `hint: <hint>`; never a traceback.
Exit code 2 is reserved for `plan` meaning "changes pending" (like terraform's
--detailed-exitcode), so no error uses it; command-line usage errors exit 64 (EX_USAGE).
"""
from __future__ import annotations


class KdeployError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InventoryError(KdeployError):
    exit_code = 3

    def __init__(self, message: str, hint: str | None = None, *, file: str | None = None,
                 field: str | None = None, line: int | None = None):
        where = file or ""
        if line is not None and file:
            where += f":{line}"
        if field:
            where = f"{where}: {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message, hint)
        self.file, self.field, self.line = file, field, line


class PrerequisiteError(KdeployError):
    exit_code = 4


class ArtifactError(KdeployError):
    exit_code = 5


class ChecksumMismatch(ArtifactError):
    def __init__(self, path: str, expected: str, actual: str):
        super().__init__(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}",
            "the file is corrupt or not the pinned version; delete it and fetch it again "
            "(kdeploy artifacts fetch), or regenerate the checksum table if you changed the version",
        )
        self.path, self.expected, self.actual = path, expected, actual


class TransportError(KdeployError):
    exit_code = 6


class PreflightError(KdeployError):
    exit_code = 7


class LabError(KdeployError):
    exit_code = 8


class VerifyError(KdeployError):
    exit_code = 9


class ApplyError(KdeployError):
    exit_code = 10
