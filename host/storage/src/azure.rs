//! Azure Blob Storage: opening from `az://container/prefix` (also `azure://`,
//! `adl://`, `abfs[s]://container/…` and `abfs[s]://container@account.dfs.core.windows.net/…`)
//! with `[storage.options]`, and Arc's storage config JSON for the job
//! process (`container`, `account_name`, `endpoint`, plus `prefix`), which
//! never carries credentials: the account key travels in the job's
//! environment as `AZURE_STORAGE_KEY`, as in Arc; other secrets under the
//! `AZURE_STORAGE_*` names `object_store` reads.
//!
//! Azure's conditional writes (`If-None-Match: *`, `If-Match`) give the
//! create-only outcome and the leases what S3's give them; an interrupted
//! block upload stays invisible and the service discards it, so there is no
//! upload to track.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::azure::{AzureAuthorizer, AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::HttpClient;
use serde::{Deserialize, Serialize};

use super::raw::{self, KeyPrefix, RawLister, RawListing, RawObject};
use super::{Storage, StoreDescriptor, redact_url};

/// Arc's Azure storage config, field for field, plus the store's prefix and
/// the other non-secret options (timeouts, retries, …) so the job process
/// behaves the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureConfig {
    pub(crate) container: String,
    #[serde(default)]
    pub(crate) prefix: String,
    #[serde(default)]
    account_name: String,
    #[serde(default)]
    endpoint: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    options: BTreeMap<String, String>,
}

/// The account key's variable, Arc's name for it.
const ACCOUNT_KEY_ENV: &str = "AZURE_STORAGE_KEY";

/// The environment variable a secret option travels in to the job process;
/// `None` for options that are not secrets.
fn secret_env(key: AzureConfigKey) -> Option<&'static str> {
    match key {
        AzureConfigKey::AccessKey => Some(ACCOUNT_KEY_ENV),
        AzureConfigKey::SasKey => Some("AZURE_STORAGE_SAS_KEY"),
        AzureConfigKey::Token => Some("AZURE_STORAGE_TOKEN"),
        AzureConfigKey::ClientSecret => Some("AZURE_STORAGE_CLIENT_SECRET"),
        AzureConfigKey::FabricSessionToken => Some("AZURE_FABRIC_SESSION_TOKEN"),
        _ => None,
    }
}

fn config_key(key: &str) -> anyhow::Result<AzureConfigKey> {
    AzureConfigKey::from_str(key).map_err(|_| anyhow::anyhow!("unknown Azure option {key:?} in [storage.options]"))
}

/// A builder from the environment, `options` (all but the retry ones) and
/// the account key in `AZURE_STORAGE_KEY`, which `object_store` itself does
/// not read.
fn builder(options: &BTreeMap<String, String>) -> anyhow::Result<MicrosoftAzureBuilder> {
    let mut builder = MicrosoftAzureBuilder::from_env();
    if let Ok(key) = std::env::var(ACCOUNT_KEY_ENV).map(|k| k.trim().to_owned())
        && !key.is_empty()
    {
        builder = builder.with_access_key(key);
    }
    for (key, value) in options.iter().filter(|(k, _)| !super::RETRY_OPTIONS.contains(&k.as_str())) {
        builder = builder.with_config(config_key(key)?, value);
    }
    Ok(builder.with_retry(super::retry_config(options)?))
}

/// An endpoint the operator wrote as `http://` (Azurite, a proxy) is meant:
/// allow it rather than fail every request.
fn allow_plain_http(builder: MicrosoftAzureBuilder) -> MicrosoftAzureBuilder {
    let endpoint = builder.get_config_value(&AzureConfigKey::Endpoint).unwrap_or_default();
    if endpoint.starts_with("http://") { builder.with_allow_http(true) } else { builder }
}

/// Opens an Azure URL with `options` (object_store's Azure keys, e.g.
/// `azure_storage_account_name`, `azure_storage_account_key`,
/// `azure_storage_endpoint`, `azure_storage_use_emulator`).
pub(super) fn open(url: &url::Url, options: &BTreeMap<String, String>) -> anyhow::Result<Storage> {
    let host = url.host_str().unwrap_or_default();
    let (container, account) = match url.username() {
        "" => (host.to_owned(), None),
        file_system => (file_system.to_owned(), host.split('.').next().map(str::to_owned)),
    };
    if container.is_empty() || container.contains('.') {
        anyhow::bail!("no container in {}: expected az://CONTAINER/PREFIX", redact_url(url));
    }
    let prefix = url.path().trim_matches('/').to_owned();
    let mut builder = builder(options)?.with_container_name(&container);
    if let Some(account) = account {
        builder = builder.with_account(account);
    }
    let builder = allow_plain_http(builder);
    let mut child_env = Vec::new();
    let mut extra = BTreeMap::new();
    for (key, value) in options {
        let parsed = config_key(key).ok();
        if let Some(env) = parsed.and_then(secret_env) {
            child_env.push((env.to_owned(), value.clone()));
        } else if !matches!(parsed, Some(AzureConfigKey::AccountName | AzureConfigKey::Endpoint | AzureConfigKey::ContainerName)) {
            extra.insert(key.clone(), value.clone());
        }
    }
    let get = |key: AzureConfigKey| builder.get_config_value(&key).unwrap_or_default();
    let config = AzureConfig {
        container,
        prefix: prefix.clone(),
        account_name: get(AzureConfigKey::AccountName),
        endpoint: get(AzureConfigKey::Endpoint),
        options: extra,
    };
    let (store, raw_lister) = build(builder, &prefix)?;
    Ok(Storage {
        store,
        description: redact_url(url),
        raw_lister: Some(raw_lister),
        immutable: Default::default(),
        descriptor: Some(StoreDescriptor::Azure(config)),
        child_env,
        uploads: None,
        late_writes: Some(super::request_timeout(options)),
    })
}

/// Opens the store again in a job process; credentials come from the
/// environment.
pub(super) fn from_config(config: &AzureConfig) -> anyhow::Result<Storage> {
    let mut builder = builder(&config.options)?.with_container_name(&config.container);
    if !config.account_name.is_empty() {
        builder = builder.with_account(&config.account_name);
    }
    if !config.endpoint.is_empty() {
        builder = builder.with_endpoint(config.endpoint.clone());
    }
    let (store, raw_lister) = build(allow_plain_http(builder), &config.prefix)?;
    Ok(Storage {
        store,
        description: config.url(),
        raw_lister: Some(raw_lister),
        immutable: Default::default(),
        descriptor: Some(StoreDescriptor::Azure(config.clone())),
        child_env: Vec::new(),
        uploads: None,
        late_writes: Some(super::request_timeout(&config.options)),
    })
}

/// The store under `prefix`, and its raw lister.
fn build(builder: MicrosoftAzureBuilder, prefix: &str) -> anyhow::Result<(Arc<dyn ObjectStore>, Arc<dyn RawLister>)> {
    let (container_url, account, signed) = list_target(&builder)?;
    let store = Arc::new(builder.build()?);
    let lister = AzureRawLister {
        store: store.clone(),
        client: raw::http_client(container_url.scheme() == "http")?,
        container_url,
        account,
        signed,
        prefix: KeyPrefix::new(prefix),
    };
    Ok((super::with_prefix(store, prefix), Arc::new(lister)))
}

/// Lists a container with List Blobs directly (see [`RawLister`]): names
/// come back as the container spells them, those XML cannot carry
/// percent-encoded under `Encoded="true"`.
#[derive(Debug)]
pub(crate) struct AzureRawLister {
    store: Arc<MicrosoftAzure>,
    client: HttpClient,
    container_url: url::Url,
    account: String,
    signed: bool,
    prefix: KeyPrefix,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EnumerationResults {
    blobs: ListedBlobs,
    next_marker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ListedBlobs {
    #[serde(rename = "Blob", default)]
    blobs: Vec<ListedBlob>,
    #[serde(rename = "BlobPrefix", default)]
    prefixes: Vec<ListedPrefix>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedBlob {
    name: BlobName,
    properties: BlobProperties,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedPrefix {
    name: BlobName,
}

#[derive(Debug, Deserialize)]
struct BlobName {
    #[serde(rename = "@Encoded", default)]
    encoded: Option<String>,
    #[serde(rename = "$text", default)]
    text: String,
}

impl BlobName {
    fn decoded(self) -> String {
        if self.encoded.as_deref() == Some("true") {
            percent_encoding::percent_decode_str(&self.text).decode_utf8_lossy().into_owned()
        } else {
            self.text
        }
    }
}

#[derive(Debug, Deserialize)]
struct BlobProperties {
    #[serde(rename = "Last-Modified")]
    last_modified: String,
    #[serde(rename = "Content-Length")]
    content_length: u64,
}

/// Whether a boolean option is on, as `object_store` spells it.
fn is_on(builder: &MicrosoftAzureBuilder, key: AzureConfigKey) -> bool {
    builder.get_config_value(&key).is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "on"))
}

/// The container's URL, the account and whether requests are signed, as
/// `object_store` derives them for the store `builder` builds (an endpoint,
/// the emulator, or the account's public host).
fn list_target(builder: &MicrosoftAzureBuilder) -> anyhow::Result<(url::Url, String, bool)> {
    let get = |key: AzureConfigKey| builder.get_config_value(&key).filter(|v| !v.is_empty());
    let emulator = is_on(builder, AzureConfigKey::UseEmulator);
    let account = get(AzureConfigKey::AccountName).or_else(|| emulator.then(|| "devstoreaccount1".to_owned())).unwrap_or_default();
    let service = match get(AzureConfigKey::Endpoint) {
        Some(endpoint) => endpoint,
        None if emulator => {
            let host = std::env::var("AZURITE_BLOB_STORAGE_URL").unwrap_or_else(|_| "http://127.0.0.1:10000".to_owned());
            format!("{}/{account}", host.trim_end_matches('/'))
        }
        None if is_on(builder, AzureConfigKey::UseFabricEndpoint) => format!("https://{account}.blob.fabric.microsoft.com"),
        None => format!("https://{account}.blob.core.windows.net"),
    };
    let mut url = url::Url::parse(&service).map_err(|e| anyhow::anyhow!("Azure endpoint {service:?}: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("Azure endpoint {service:?} cannot hold a path"))?
        .pop_if_empty()
        .push(&get(AzureConfigKey::ContainerName).unwrap_or_default());
    Ok((url, account, !is_on(builder, AzureConfigKey::SkipSignature)))
}

impl AzureRawLister {
    async fn page(&self, url: &url::Url) -> anyhow::Result<EnumerationResults> {
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(object_store::client::HttpRequestBody::from(bytes::Bytes::new()))?;
        if self.signed {
            let credential = self.store.credentials().get_credential().await?;
            AzureAuthorizer::new(&credential, &self.account).authorize(&mut request);
        }
        Ok(quick_xml::de::from_str(&raw::send(&self.client, request, "List Blobs").await?)?)
    }
}

#[async_trait::async_trait]
impl RawLister for AzureRawLister {
    async fn list(&self, prefix: &str, delimiter: bool) -> anyhow::Result<RawListing> {
        let full_prefix = self.prefix.full(prefix);
        let mut listing = RawListing::default();
        let mut marker: Option<String> = None;
        loop {
            let mut url = self.container_url.clone();
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("restype", "container").append_pair("comp", "list").append_pair("prefix", &full_prefix);
                if delimiter {
                    query.append_pair("delimiter", "/");
                }
                if let Some(marker) = &marker {
                    query.append_pair("marker", marker);
                }
            }
            let page = self.page(&url).await?;
            for blob in page.blobs.blobs {
                let name = blob.name.decoded();
                let last_modified = chrono::DateTime::parse_from_rfc2822(&blob.properties.last_modified)
                    .map_err(|e| anyhow::anyhow!("Last-Modified {:?} of {name:?}: {e}", blob.properties.last_modified))?
                    .to_utc();
                if let Some(key) = self.prefix.strip(name) {
                    listing.objects.push(RawObject { key, size: blob.properties.content_length, last_modified });
                }
            }
            listing.dirs.extend(page.blobs.prefixes.into_iter().filter_map(|p| self.prefix.strip(p.name.decoded())));
            match page.next_marker {
                Some(next) if !next.is_empty() => marker = Some(next),
                _ => return Ok(listing),
            }
        }
    }

    fn store_name(&self) -> &'static str {
        "MicrosoftAzure"
    }
}

impl AzureConfig {
    /// `az://container/prefix`, for messages.
    pub(crate) fn url(&self) -> String {
        format!("az://{}/{}", self.container, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_job_config_round_trips_and_carries_no_secret() {
        let url = url::Url::parse("az://lake/warehouse/arc").unwrap();
        let storage = open(
            &url,
            &options(&[
                ("azure_storage_account_name", "devstoreaccount1"),
                ("azure_storage_account_key", "c2VjcmV0"),
                ("azure_storage_endpoint", "http://127.0.0.1:10000/devstoreaccount1"),
                ("timeout", "5s"),
            ]),
        )
        .unwrap();
        let descriptor = storage.descriptor().unwrap();
        assert_eq!(descriptor.storage_type(), "azure");
        let json = descriptor.storage_config();
        assert!(!json.contains("c2VjcmV0"), "{json}");
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["container"], "lake");
        assert_eq!(parsed["prefix"], "warehouse/arc");
        assert_eq!(parsed["account_name"], "devstoreaccount1");
        assert_eq!(parsed["endpoint"], "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(parsed["options"]["timeout"], "5s");
        assert_eq!(storage.child_env(), [("AZURE_STORAGE_KEY".to_owned(), "c2VjcmV0".to_owned())]);
        let read_back = StoreDescriptor::from_arc("azure", &json).unwrap();
        assert_eq!(&read_back, descriptor);
        assert_eq!(read_back.storage_config(), json);
    }

    #[test]
    fn a_hadoop_style_url_names_the_container_and_the_account() {
        let url = url::Url::parse("abfss://data@myaccount.dfs.core.windows.net/lake").unwrap();
        let storage = open(&url, &options(&[("azure_storage_account_key", "c2VjcmV0")])).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&storage.descriptor().unwrap().storage_config()).unwrap();
        assert_eq!((parsed["container"].as_str(), parsed["account_name"].as_str()), (Some("data"), Some("myaccount")));
    }

    #[test]
    fn an_unknown_option_is_named() {
        let url = url::Url::parse("az://lake").unwrap();
        let err = open(&url, &options(&[("azure_storage_account_name", "a"), ("colour", "blue")])).unwrap_err();
        assert!(err.to_string().contains("unknown Azure option \"colour\""), "{err}");
    }

    #[test]
    fn a_list_blobs_page_is_read_with_encoded_names_and_prefixes_between_blobs() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="https://a.blob.core.windows.net/" ContainerName="c">
  <Prefix>lake/db/</Prefix><Delimiter>/</Delimiter>
  <Blobs>
    <Blob><Name>lake/db/a.parquet</Name><Properties><Last-Modified>Mon, 07 Dec 2026 21:50:22 GMT</Last-Modified><Content-Length>12</Content-Length><Content-Type>application/octet-stream</Content-Type></Properties></Blob>
    <BlobPrefix><Name>lake/db/cpu/</Name></BlobPrefix>
    <Blob><Name Encoded="true">lake%2Fdb%2Fctrl%01.parquet</Name><Properties><Last-Modified>Mon, 07 Dec 2026 21:50:23 GMT</Last-Modified><Content-Length>7</Content-Length></Properties></Blob>
  </Blobs>
  <NextMarker>next</NextMarker>
</EnumerationResults>"#;
        let page: EnumerationResults = quick_xml::de::from_str(xml).unwrap();
        assert_eq!(page.next_marker.as_deref(), Some("next"));
        let names: Vec<String> = page.blobs.blobs.into_iter().map(|b| b.name.decoded()).collect();
        assert_eq!(names, ["lake/db/a.parquet", "lake/db/ctrl\u{1}.parquet"]);
        let prefixes: Vec<String> = page.blobs.prefixes.into_iter().map(|p| p.name.decoded()).collect();
        assert_eq!(prefixes, ["lake/db/cpu/"]);
    }

    #[test]
    fn the_listing_goes_to_the_container_url_object_store_uses() {
        let target = |pairs: &[(&str, &str)]| {
            let mut builder = MicrosoftAzureBuilder::new().with_container_name("lake");
            for (key, value) in pairs {
                builder = builder.with_config(config_key(key).unwrap(), *value);
            }
            let (url, account, signed) = list_target(&builder).unwrap();
            (url.to_string(), account, signed)
        };
        assert_eq!(
            target(&[("azure_storage_account_name", "acct")]),
            ("https://acct.blob.core.windows.net/lake".to_owned(), "acct".to_owned(), true)
        );
        assert_eq!(
            target(&[
                ("azure_storage_account_name", "devstoreaccount1"),
                ("azure_storage_endpoint", "http://127.0.0.1:10000/devstoreaccount1/")
            ])
            .0,
            "http://127.0.0.1:10000/devstoreaccount1/lake"
        );
        assert!(!target(&[("azure_storage_use_emulator", "true"), ("azure_skip_signature", "true")]).2);
    }
}
