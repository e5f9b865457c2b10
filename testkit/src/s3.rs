//! An S3 server in the test's own process: s3s-fs, a real implementation of the S3 protocol
//! (SigV4 signatures checked, multipart uploads, listings) keeping objects as files in a
//! temporary directory. Backups are tested against it, never against a mock.

use std::path::Path;

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "backup-writer";
/// Its secret.
pub const SECRET_KEY: &str = "backup-writer-secret";

/// A running server; it stops when the test's runtime does.
pub struct S3Server {
    /// The URL to reach it at, `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl S3Server {
    /// Serves `root` (each directory in it a bucket), creating the buckets named.
    pub async fn start(root: &Path, buckets: &[&str]) -> std::io::Result<Self> {
        for bucket in buckets {
            std::fs::create_dir_all(root.join(bucket))?;
        }
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let connection =
                    http.serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone()).into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        Ok(Self { endpoint })
    }
}
