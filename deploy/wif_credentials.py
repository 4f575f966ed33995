"""Google credentials for CI from the job's OIDC token (Workload Identity Federation), no JSON key.

``python3 deploy/wif_credentials.py config`` writes an ``external_account`` credential
configuration (the documented format ``gcloud auth login --cred-file`` and the
Google client libraries read) that exchanges the CircleCI OIDC token in
``$CIRCLE_OIDC_TOKEN_V2`` for a short-lived token of ``$GCP_SERVICE_ACCOUNT``.
``python3 deploy/wif_credentials.py token`` prints an access token from that
configuration (for ``docker login -u oauth2accesstoken``).

Environment: ``GCP_WIF_PROVIDER`` (``projects/<number>/locations/global/
workloadIdentityPools/<pool>/providers/<provider>``), ``GCP_SERVICE_ACCOUNT``,
``CIRCLE_OIDC_TOKEN_V2`` and ``TAAR_GCP_CREDENTIALS`` (where the configuration
goes, default ``$HOME/gcp-wif.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def credential_config(provider: str, service_account: str, token_file: str) -> dict:
    """The ``external_account`` configuration for ``provider`` impersonating ``service_account``."""
    if not provider.startswith("projects/") or "/providers/" not in provider:
        raise ValueError("GCP_WIF_PROVIDER must be projects/<number>/locations/global/workloadIdentityPools/"
                         f"<pool>/providers/<provider>, got {provider!r}")
    if "@" not in service_account:
        raise ValueError(f"GCP_SERVICE_ACCOUNT must be a service account e-mail, got {service_account!r}")
    return {
        "type": "external_account",
        "audience": f"//iam.googleapis.com/{provider}",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": "https://sts.googleapis.com/v1/token",
        "service_account_impersonation_url": (
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
            f"{service_account}:generateAccessToken"),
        "credential_source": {"file": token_file},
    }


def write_config(env=os.environ) -> Path:
    """Write the OIDC token and the configuration (both mode 600); return the configuration's path."""
    target = Path(env.get("TAAR_GCP_CREDENTIALS") or Path(env.get("HOME", ".")) / "gcp-wif.json")
    token = env.get("CIRCLE_OIDC_TOKEN_V2", "")
    if not token:
        raise ValueError("CIRCLE_OIDC_TOKEN_V2 is empty: the job needs a context (OIDC) to authenticate")
    token_file = target.with_suffix(".token")
    config = credential_config(env.get("GCP_WIF_PROVIDER", ""), env.get("GCP_SERVICE_ACCOUNT", ""),
                               str(token_file))
    for path, text in ((token_file, token), (target, json.dumps(config, indent=2))):
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


def access_token(config_path: Path) -> str:
    import google.auth
    from google.auth.transport.requests import Request

    credentials, _ = google.auth.load_credentials_from_file(str(config_path), scopes=[SCOPE])
    credentials.refresh(Request())
    return credentials.token


def main(argv: list[str]) -> int:
    if argv[1:] == ["config"]:
        print(write_config())
        return 0
    if argv[1:] == ["token"]:
        print(access_token(write_config()))
        return 0
    print("usage: wif_credentials.py config|token", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except ValueError as exc:
        print(f"wif_credentials: {exc}", file=sys.stderr)
        sys.exit(2)
