#!/usr/bin/env bash
# S3 from GCP without keys: writes this VM's Google-signed identity token to
# $AWS_WEB_IDENTITY_TOKEN_FILE, where botocore (s3fs) and pyarrow (Ray Train) read it to call AWS STS
# AssumeRoleWithWebIdentity for $AWS_ROLE_ARN, re-reading it whenever they refresh credentials.
#   gcp_identity_token.sh --once    fetch one token, then exit (before `ray start`)
#   gcp_identity_token.sh           keep it fresh: Google identity tokens expire after an hour
set -euo pipefail
audience="${AWS_WEB_IDENTITY_AUDIENCE:-sts.amazonaws.com}"
url="http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/identity?audience=${audience}&format=full"
refresh_s=1800

fetch() {
  curl -sSf -H "Metadata-Flavor: Google" "$url" -o "${AWS_WEB_IDENTITY_TOKEN_FILE}.tmp"
  mv "${AWS_WEB_IDENTITY_TOKEN_FILE}.tmp" "$AWS_WEB_IDENTITY_TOKEN_FILE"
}

fetch
[[ "${1:-}" == "--once" ]] && exit 0
while sleep "$refresh_s"; do
  fetch || echo "identity token refresh failed; retrying in ${refresh_s}s" >&2
done
