"""An import's folder: the client's S3 prefix, SFTP folder or a local folder, opened with the
import's own credentials, listed one level deep (imports never look inside sub-folders).

A folder is a landing zone (landing.py) for the shared path's downloads; listing problems are
told in the vendor's words ("Given S3 access key is not valid", "Please check the folder path
and try again")."""

from __future__ import annotations

import os
from typing import Any

from ingest_pipeline.config import ImportConfig, IngestConfig
from ingest_pipeline.landing import (
    FolderListing,
    LandingZone,
    LocalLanding,
    MissingSecret,
    S3Landing,
    s3_client_from_env,
)

INVALID_ACCESS_KEY = "Given S3 access key is not valid"
CHECK_FOLDER = "Please check the folder path and try again"
_BAD_KEY_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_NO_FOLDER_CODES = {"NoSuchBucket", "AccessDenied", "AllAccessDisabled", "PermanentRedirect"}


class FolderError(Exception):
    """The folder cannot be listed; the message says why, in the vendor's words where they
    apply, and never holds a secret."""


def _named(name: str | None, field: str) -> tuple[str, str] | None:
    return None if name is None else (name, field)


def s3_client(imp: ImportConfig) -> Any:
    """A boto3 client with the import's credentials (else the standard AWS variables);
    AWS_ENDPOINT_URL still applies (an S3-compatible server)."""
    try:
        return s3_client_from_env(
            f"import {imp.name}",
            access_key_id=_named(imp.s3_access_key_env, "s3_access_key_env"),
            secret_access_key=_named(imp.s3_secret_key_env, "s3_secret_key_env"),
            session_token=_named(imp.s3_session_token_env, "s3_session_token_env"),
            region=imp.s3_region,
        )
    except MissingSecret as exc:
        raise FolderError(str(exc)) from None


def listing_problem(exc: BaseException, url: str) -> str | None:
    """Why listing `url` failed, in the vendor's words where they apply ("Given S3 access key
    is not valid", "Please check the folder path and try again"), never with a secret; None
    for an exception that is not a listing problem (S3, SFTP)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from ingest_pipeline.sftp import SftpError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _BAD_KEY_CODES:
            return f"{INVALID_ACCESS_KEY} ({code})"
        if code in _NO_FOLDER_CODES:
            return f"{CHECK_FOLDER}: {url} ({code})"
        return f"listing {url} failed: {code or exc}"
    if isinstance(exc, BotoCoreError):
        return f"listing {url} failed: {exc}"
    if isinstance(exc, SftpError | MissingSecret | FolderError):
        return str(exc)
    return None


class _MissingFolder:
    """A local import folder that does not exist: listed as the vendor's 'check the folder
    path', never created."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __getattr__(self, name: str) -> Any:
        raise FolderError(f"{CHECK_FOLDER}: {self.url} is not a folder")


class ImportFolder:
    """The folder of one import, for one run (close it after)."""

    def __init__(self, imp: ImportConfig, url: str) -> None:
        self.imp, self.url = imp, url
        self._sftp: Any = None
        self.zone: LandingZone
        if imp.channel == "s3":
            self.zone = S3Landing(url, client=s3_client(imp))
        elif imp.channel == "sftp":
            from ingest_pipeline.sftp import SftpCredentials, SftpLanding, SftpSession

            self._sftp = SftpSession(
                url,
                SftpCredentials(
                    password_env=imp.sftp_password_env,
                    key_env=imp.sftp_key_env,
                    known_hosts=imp.sftp_known_hosts,
                    owner=f"import {imp.name}",
                    env_field_password="sftp_password_env",
                    env_field_key="sftp_key_env",
                ),
            )
            self.zone = SftpLanding(self._sftp)
        elif os.path.isdir(url):
            self.zone = LocalLanding(url)
        else:
            # not LocalLanding, which would create it: a folder that is not there is a wrong
            # path, and looking at it must write nothing
            self.zone = _MissingFolder(url)

    def listing(self) -> FolderListing:
        """The folder's own files and sub-folders (LandingZone-specific `list_folder`), listing
        problems told in the vendor's words."""
        try:
            return self.zone.list_folder()  # type: ignore[attr-defined]
        except FolderError:
            raise
        except Exception as exc:
            problem = listing_problem(exc, self.url)
            if problem is None:
                raise
            raise FolderError(problem) from None

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()

    def __enter__(self) -> ImportFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_folder(config: IngestConfig, imp: ImportConfig) -> ImportFolder:
    return ImportFolder(imp, config.import_folder(imp))
