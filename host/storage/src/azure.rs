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

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use serde::{Deserialize, Serialize};

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
    let store = Arc::new(builder.build()?);
    Ok(Storage {
        store: super::with_prefix(store, &prefix),
        description: redact_url(url),
        raw_lister: None,
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
    let store = Arc::new(allow_plain_http(builder).build()?);
    Ok(Storage {
        store: super::with_prefix(store, &config.prefix),
        description: config.url(),
        raw_lister: None,
        immutable: Default::default(),
        descriptor: Some(StoreDescriptor::Azure(config.clone())),
        child_env: Vec::new(),
        uploads: None,
        late_writes: Some(super::request_timeout(&config.options)),
    })
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
}
