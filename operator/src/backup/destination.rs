//! Where backups go: a bucket and prefix on S3 or any S3-compatible server, and the object
//! each backup becomes.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::http::HyperConnector;
use super::BackupError;

/// How every backup object's name ends.
pub const BACKUP_SUFFIX: &str = ".snapshot";

/// A bucket on S3 or an S3-compatible server (MinIO, Ceph, ...).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    pub bucket: String,
    /// Objects are named `<prefix>/<namespace>/<cluster>/<time>-r<revision>.snapshot`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The server's URL, for S3-compatible servers (`http://` allowed); AWS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Address the bucket in the path (`endpoint/bucket/key`) rather than the host name, as
    /// most S3-compatible servers need.
    #[serde(default)]
    pub force_path_style: bool,
    /// A Secret in the cluster's namespace holding `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`. Without one, the
    /// operator's own environment (its AWS_* variables, a web identity, instance metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

fn default_region() -> String {
    "us-east-1".to_string()
}

/// Keys to sign requests with, as read from the credentials Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself: destinations end up in logs.
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// Why the credentials Secret could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the credentials Secret {name}: {reason}")]
pub struct CredentialsError {
    pub name: String,
    pub reason: String,
}

impl Credentials {
    /// The keys in the credentials Secret `name`.
    pub async fn read(secrets: &kube::Api<Secret>, name: &str) -> Result<Self, CredentialsError> {
        let failed = |reason: String| CredentialsError { name: name.to_string(), reason };
        let secret = secrets.get_opt(name).await.map_err(|e| failed(e.to_string()))?;
        let data = secret.ok_or_else(|| failed("it does not exist".into()))?.data.unwrap_or_default();
        let value = |key: &str| -> Result<Option<String>, CredentialsError> {
            data.get(key)
                .map(|v| String::from_utf8(v.0.clone()).map(|s| s.trim().to_string()))
                .transpose()
                .map_err(|_| failed(format!("`{key}` is not UTF-8")))
        };
        let required = |key: &str| value(key)?.ok_or_else(|| failed(format!("it has no `{key}` key")));
        Ok(Credentials {
            access_key_id: required(ACCESS_KEY_ID)?,
            secret_access_key: required(SECRET_ACCESS_KEY)?,
            session_token: value(SESSION_TOKEN)?,
        })
    }

    /// The Secret `name` of `destination`, if it names one.
    pub async fn of(
        destination: &S3Destination,
        secrets: &kube::Api<Secret>,
    ) -> Result<Option<Self>, CredentialsError> {
        match &destination.credentials_secret {
            Some(name) => Ok(Some(Self::read(secrets, name).await?)),
            None => Ok(None),
        }
    }

    /// The keys as a credentials Secret (and the AWS SDKs' environment) name them.
    pub fn as_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (ACCESS_KEY_ID, self.access_key_id.clone()),
            (SECRET_ACCESS_KEY, self.secret_access_key.clone()),
        ];
        env.extend(self.session_token.clone().map(|token| (SESSION_TOKEN, token)));
        env
    }
}

/// The keys of a credentials Secret: the AWS SDKs' environment variables.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

impl S3Destination {
    /// A client for the bucket, signing with `credentials` where given.
    pub fn store(&self, credentials: Option<&Credentials>) -> Result<AmazonS3, BackupError> {
        // Keys of the Secret are used alone: a session token in the operator's own environment
        // would be sent with them, and spoil their signature.
        let base = if credentials.is_some() { AmazonS3Builder::new() } else { AmazonS3Builder::from_env() };
        let mut builder = base
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_virtual_hosted_style_request(!self.force_path_style)
            .with_http_connector(HyperConnector);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(credentials) = credentials {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(&credentials.secret_access_key);
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token);
            }
        }
        builder.build().map_err(BackupError::Destination)
    }

    /// Where the backups of cluster `name` in `namespace` are kept.
    pub fn cluster_prefix(&self, namespace: &str, name: &str) -> Path {
        self.path_of(&[namespace, name])
    }

    /// `parts` under the prefix; empty parts (a prefix's leading or doubled slashes) dropped.
    fn path_of(&self, parts: &[&str]) -> Path {
        Path::from_iter(self.prefix.split('/').chain(parts.iter().copied()).filter(|p| !p.is_empty()))
    }
}

/// The object a backup of cluster `name` taken at `at`, holding revision `revision`, becomes:
/// names sort by time, so the newest is the last listed.
pub fn object_path(
    destination: &S3Destination,
    namespace: &str,
    name: &str,
    at: DateTime<Utc>,
    revision: u64,
) -> Path {
    let file = format!("{}-r{revision}{BACKUP_SUFFIX}", at.format("%Y%m%dT%H%M%SZ"));
    destination.path_of(&[namespace, name, &file])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(prefix: &str) -> S3Destination {
        serde_json::from_value(serde_json::json!({"bucket": "b", "prefix": prefix})).expect("parses")
    }

    #[test]
    fn backups_are_named_by_cluster_then_time_so_that_they_sort() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T13:05:09Z").expect("time").with_timezone(&Utc);
        let path = object_path(&destination("/backups/prod/"), "db", "meta", at, 42);
        assert_eq!(path.as_ref(), "backups/prod/db/meta/20261207T130509Z-r42.snapshot");
        assert_eq!(
            object_path(&destination(""), "db", "meta", at, 7).as_ref(),
            "db/meta/20261207T130509Z-r7.snapshot"
        );
        let later = at + chrono::Duration::seconds(1);
        assert!(
            object_path(&destination(""), "db", "meta", at, 900)
                < object_path(&destination(""), "db", "meta", later, 1)
        );
    }

    #[test]
    fn a_destination_defaults_to_aws_style_addressing_in_us_east_1() {
        let d = destination("");
        assert_eq!((d.region.as_str(), d.force_path_style, d.endpoint), ("us-east-1", false, None));
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let c = Credentials {
            access_key_id: "AKIA".into(),
            secret_access_key: "hunter2".into(),
            session_token: Some("tok".into()),
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIA") && !shown.contains("hunter2") && !shown.contains("tok\""), "{shown}");
    }
}
