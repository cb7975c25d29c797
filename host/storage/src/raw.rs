//! Listings by exact names, for the stores whose `object_store` listing
//! stops at the first key it cannot name (`//`, a `.` segment, a control
//! character): S3 and Azure fail the whole page, so one such key would hide
//! every object after it. A [`RawLister`] asks the service itself, signed
//! with the store's own credentials and sent through its HTTP client
//! settings, and returns every key exactly as the store spells it; the
//! caller sets aside what `object_store` cannot read.

use object_store::client::{HttpClient, HttpConnector, ReqwestConnector};

/// One object of a raw listing, its key relative to the store's prefix.
#[derive(Debug)]
pub(crate) struct RawObject {
    pub(crate) key: String,
    pub(crate) size: u64,
    pub(crate) last_modified: chrono::DateTime<chrono::Utc>,
}

/// What a raw listing found: objects, and with a delimiter the
/// sub-directories (relative keys ending in `/`).
#[derive(Debug, Default)]
pub(crate) struct RawListing {
    pub(crate) objects: Vec<RawObject>,
    pub(crate) dirs: Vec<String>,
}

/// A store's List call, by exact names.
#[async_trait::async_trait]
pub(crate) trait RawLister: std::fmt::Debug + Send + Sync {
    /// Everything under `prefix` (relative to the store), or with
    /// `delimiter` one level of it.
    async fn list(&self, prefix: &str, delimiter: bool) -> anyhow::Result<RawListing>;

    /// The store's name in errors (`object_store`'s name for it).
    fn store_name(&self) -> &'static str;
}

/// The store's key prefix inside its bucket or container, which a raw
/// listing adds to the prefix it asks for and strips from what it gets.
#[derive(Debug)]
pub(crate) struct KeyPrefix(String);

impl KeyPrefix {
    pub(crate) fn new(prefix: &str) -> Self {
        Self(prefix.trim_matches('/').to_owned())
    }

    /// The service's prefix for `prefix` (relative to the store).
    pub(crate) fn full(&self, prefix: &str) -> String {
        match (self.0.is_empty(), prefix.is_empty()) {
            (true, _) => prefix.to_owned(),
            (false, true) => format!("{}/", self.0),
            (false, false) => format!("{}/{prefix}", self.0),
        }
    }

    /// `key` relative to the store; `None` for a key outside it.
    pub(crate) fn strip(&self, key: String) -> Option<String> {
        if self.0.is_empty() { Some(key) } else { key.strip_prefix(&format!("{}/", self.0)).map(str::to_owned) }
    }
}

/// An HTTP client with `object_store`'s defaults, allowing plain HTTP where
/// the store does (a local server, an emulator).
pub(crate) fn http_client(allow_http: bool) -> anyhow::Result<HttpClient> {
    let options = object_store::ClientOptions::new().with_allow_http(allow_http);
    Ok(ReqwestConnector::default().connect(&options)?)
}

/// Sends `request`; the body of a successful answer, else an error quoting
/// the service's.
pub(crate) async fn send(
    client: &HttpClient,
    request: http::Request<object_store::client::HttpRequestBody>,
    call: &str,
) -> anyhow::Result<String> {
    let response = client.execute(request).await?;
    let status = response.status();
    let body = response.into_body().bytes().await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    anyhow::ensure!(status.is_success(), "{call} answered {status}: {}", text.chars().take(300).collect::<String>());
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_prefix_is_added_and_stripped() {
        let prefix = KeyPrefix::new("/lake/");
        assert_eq!(prefix.full(""), "lake/");
        assert_eq!(prefix.full("db/cpu/"), "lake/db/cpu/");
        assert_eq!(prefix.strip("lake/db/x".to_owned()).as_deref(), Some("db/x"));
        assert_eq!(prefix.strip("lakeside/x".to_owned()), None);
        let none = KeyPrefix::new("");
        assert_eq!(none.full("db/"), "db/");
        assert_eq!(none.strip("db/x".to_owned()).as_deref(), Some("db/x"));
    }
}
