//! S3 and S3-compatible stores: opening from `s3://bucket/prefix` with
//! `[storage.options]`, and Arc's storage config JSON for the job process
//! (`bucket`, `prefix`, `region`, `endpoint`, `path_style`, `use_ssl`), which
//! never carries credentials: those travel in the job's environment.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::HttpClient;
use object_store::path::Path;
use object_store::signer::Signer;
use serde::{Deserialize, Serialize};

use super::raw::{self, KeyPrefix, RawLister, RawListing, RawObject};
use super::{Storage, StoreDescriptor, TrackedUploads, redact_url, with_prefix};

/// Arc's S3 storage config, field for field, plus the other non-secret
/// options (timeouts, retries, …) so the job process behaves the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Config {
    pub(crate) bucket: String,
    #[serde(default)]
    pub(crate) prefix: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    path_style: bool,
    #[serde(default = "yes")]
    use_ssl: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    options: BTreeMap<String, String>,
}

/// Applies every option but the retry ones to `builder`.
fn configure(mut builder: AmazonS3Builder, options: &BTreeMap<String, String>) -> anyhow::Result<AmazonS3Builder> {
    for (key, value) in options.iter().filter(|(k, _)| !super::RETRY_OPTIONS.contains(&k.as_str())) {
        let config_key = AmazonS3ConfigKey::from_str(key).map_err(|_| anyhow::anyhow!("unknown S3 option {key:?} in [storage.options]"))?;
        builder = builder.with_config(config_key, value);
    }
    Ok(builder.with_retry(super::retry_config(options)?))
}

fn yes() -> bool {
    true
}

/// Options that are secrets, and the environment variable each travels in.
const SECRETS: &[(&str, &str)] = &[
    ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
    ("access_key_id", "AWS_ACCESS_KEY_ID"),
    ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("aws_session_token", "AWS_SESSION_TOKEN"),
    ("session_token", "AWS_SESSION_TOKEN"),
    ("aws_token", "AWS_SESSION_TOKEN"),
    ("token", "AWS_SESSION_TOKEN"),
];

/// Opens `s3://bucket/prefix` with `options` (object_store's S3 keys, e.g.
/// `aws_endpoint`, `aws_region`, `aws_allow_http`,
/// `aws_virtual_hosted_style_request`, `aws_conditional_put`); credentials
/// come from the options or the standard AWS environment variables.
pub(super) fn open(url: &url::Url, options: &BTreeMap<String, String>) -> anyhow::Result<Storage> {
    let bucket = url.host_str().filter(|b| !b.is_empty()).ok_or_else(|| anyhow::anyhow!("no bucket in {url}"))?.to_owned();
    let prefix = url.path().trim_matches('/').to_owned();
    let builder = configure(AmazonS3Builder::from_env().with_bucket_name(&bucket), options)?;
    let child_env: Vec<(String, String)> = options
        .iter()
        .filter_map(|(key, value)| SECRETS.iter().find(|(k, _)| k == key).map(|(_, env)| ((*env).to_owned(), value.clone())))
        .collect();
    // Everything that is not a secret, and not already one of Arc's fields,
    // travels in the job config.
    let arc_fields = ["aws_endpoint", "endpoint", "aws_region", "region", "aws_bucket", "bucket"];
    let extra: BTreeMap<String, String> = options
        .iter()
        .filter(|(k, _)| !SECRETS.iter().any(|(s, _)| s == k) && !arc_fields.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let get = |key: AmazonS3ConfigKey| builder.get_config_value(&key).unwrap_or_default();
    let endpoint = get(AmazonS3ConfigKey::Endpoint);
    let config = S3Config {
        bucket,
        prefix: prefix.clone(),
        region: get(AmazonS3ConfigKey::Region),
        path_style: get(AmazonS3ConfigKey::VirtualHostedStyleRequest) != "true",
        use_ssl: !endpoint.starts_with("http://"),
        endpoint,
        options: extra,
    };
    let allow_http = get(AmazonS3ConfigKey::Client(object_store::ClientConfigKey::AllowHttp)) == "true";
    let store = Arc::new(builder.build()?);
    Ok(Storage {
        store: with_prefix(store.clone(), &prefix),
        description: redact_url(url),
        raw_lister: Some(Arc::new(S3RawLister::new(store.clone(), config.region.clone(), &prefix, allow_http)?)),
        immutable: Default::default(),
        descriptor: Some(StoreDescriptor::S3(config)),
        child_env,
        uploads: Some(TrackedUploads::new(store, &prefix)),
        late_writes: Some(super::request_timeout(options)),
    })
}

/// Opens the store again in a job process; credentials come from the
/// environment.
pub(super) fn from_config(config: &S3Config) -> anyhow::Result<Storage> {
    let builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_allow_http(!config.use_ssl)
        .with_virtual_hosted_style_request(!config.path_style);
    let mut builder = configure(builder, &config.options)?;
    if !config.region.is_empty() {
        builder = builder.with_region(&config.region);
    }
    if !config.endpoint.is_empty() {
        builder = builder.with_endpoint(&config.endpoint);
    }
    let store = Arc::new(builder.build()?);
    let description = format!("s3://{}/{}", config.bucket, config.prefix);
    Ok(Storage {
        store: with_prefix(store.clone(), &config.prefix),
        description,
        raw_lister: Some(Arc::new(S3RawLister::new(store.clone(), config.region.clone(), &config.prefix, !config.use_ssl)?)),
        immutable: Default::default(),
        descriptor: Some(StoreDescriptor::S3(config.clone())),
        child_env: Vec::new(),
        uploads: Some(TrackedUploads::new(store, &config.prefix)),
        late_writes: Some(super::request_timeout(&config.options)),
    })
}

/// Lists a bucket with `ListObjectsV2` directly (see [`RawLister`]), with
/// `encoding-type=url` so that no key can break the XML.
#[derive(Debug)]
pub(crate) struct S3RawLister {
    store: Arc<AmazonS3>,
    client: HttpClient,
    region: String,
    prefix: KeyPrefix,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<ListedObject>,
    #[serde(default)]
    common_prefixes: Vec<ListedPrefix>,
    next_continuation_token: Option<String>,
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedObject {
    key: String,
    size: u64,
    last_modified: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedPrefix {
    prefix: String,
}

impl S3RawLister {
    fn new(store: Arc<AmazonS3>, region: String, prefix: &str, allow_http: bool) -> anyhow::Result<Self> {
        let region = if region.is_empty() { "us-east-1".to_owned() } else { region };
        Ok(Self { store, client: raw::http_client(allow_http)?, region, prefix: KeyPrefix::new(prefix) })
    }

    async fn page(&self, url: &url::Url) -> anyhow::Result<ListBucketResult> {
        let credential = self.store.credentials().get_credential().await?;
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(object_store::client::HttpRequestBody::from(bytes::Bytes::new()))?;
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut request, None);
        Ok(quick_xml::de::from_str(&raw::send(&self.client, request, "ListObjectsV2").await?)?)
    }
}

#[async_trait::async_trait]
impl RawLister for S3RawLister {
    async fn list(&self, prefix: &str, delimiter: bool) -> anyhow::Result<RawListing> {
        // The bucket's URL as object_store builds it (endpoint, path or
        // virtual-hosted style), read off a signed URL of a placeholder key.
        let mut bucket_url = self.store.signed_url(http::Method::GET, &Path::from("placeholder"), Duration::from_secs(60)).await?;
        bucket_url.set_query(None);
        let path = bucket_url.path().trim_end_matches("placeholder").to_owned();
        bucket_url.set_path(&path);
        let full_prefix = self.prefix.full(prefix);
        let mut listing = RawListing::default();
        let mut token: Option<String> = None;
        loop {
            let mut url = bucket_url.clone();
            {
                // `encoding-type=url`, so that no key can break the XML.
                let mut query = url.query_pairs_mut();
                query.append_pair("list-type", "2").append_pair("encoding-type", "url").append_pair("prefix", &full_prefix);
                if delimiter {
                    query.append_pair("delimiter", "/");
                }
                if let Some(token) = &token {
                    query.append_pair("continuation-token", token);
                }
            }
            let page = self.page(&url).await?;
            let decode = |text: String| -> String {
                if page.encoding_type.as_deref() == Some("url") {
                    percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned()
                } else {
                    text
                }
            };
            for object in page.contents {
                if let Some(key) = self.prefix.strip(decode(object.key)) {
                    listing.objects.push(RawObject { key, size: object.size, last_modified: object.last_modified });
                }
            }
            listing.dirs.extend(page.common_prefixes.into_iter().filter_map(|p| self.prefix.strip(decode(p.prefix))));
            match page.next_continuation_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(listing),
            }
        }
    }

    fn store_name(&self) -> &'static str {
        "S3"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_job_config_round_trips_and_keeps_the_prefix() {
        let url = url::Url::parse("s3://arc-data/instances/abc123/").unwrap();
        let opts = options(&[
            ("aws_region", "us-west-2"),
            ("aws_endpoint", "http://localhost:9000"),
            ("aws_allow_http", "true"),
            ("timeout", "5s"),
            ("max_retries", "2"),
            ("aws_access_key_id", "AKIA"),
            ("aws_secret_access_key", "s3cr3t"),
        ]);
        let storage = open(&url, &opts).unwrap();
        let descriptor = storage.descriptor().unwrap().clone();
        assert_eq!(descriptor.storage_type(), "s3");
        let config_json = descriptor.storage_config();
        let json: serde_json::Value = serde_json::from_str(&config_json).unwrap();
        assert_eq!(json["bucket"], "arc-data");
        assert_eq!(json["prefix"], "instances/abc123");
        assert_eq!(json["region"], "us-west-2");
        assert_eq!(json["endpoint"], "http://localhost:9000");
        assert_eq!((json["path_style"].as_bool(), json["use_ssl"].as_bool()), (Some(true), Some(false)));
        assert_eq!(json["options"]["timeout"], "5s", "non-secret options reach the job");
        assert_eq!(json["options"]["max_retries"], "2");
        assert!(!config_json.contains("s3cr3t") && !config_json.contains("AKIA"), "no secrets in the job config");
        assert!(!storage.to_string().contains("s3cr3t"));
        assert!(storage.child_env().contains(&("AWS_SECRET_ACCESS_KEY".to_owned(), "s3cr3t".to_owned())));
        let read_back = StoreDescriptor::from_arc("s3", &config_json).unwrap();
        assert_eq!(read_back, descriptor, "Arc's pair round-trips");
        let rebuilt = Storage::from_descriptor(&read_back).unwrap();
        assert_eq!(rebuilt.descriptor(), Some(&descriptor), "rebuilding yields the identical config");
    }

    #[test]
    fn unknown_options_and_missing_buckets_are_errors() {
        let url = url::Url::parse("s3://bucket/p").unwrap();
        assert!(open(&url, &options(&[("aws_regoin", "x")])).unwrap_err().to_string().contains("aws_regoin"));
        assert!(open(&url, &options(&[("retry_timeout", "soon")])).unwrap_err().to_string().contains("retry_timeout"));
        assert!(StoreDescriptor::from_arc("resilient", "{}").unwrap_err().to_string().contains("unsupported storage type: resilient"));
    }
}
