//! What executing work costs in object-store requests.

/// Object-store requests, by kind. LIST pages hold up to 1,000 keys, as on
/// S3; multipart uploads count their parts plus the create and complete
/// calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCost {
    /// LIST requests (pages).
    pub list: u64,
    /// GET and HEAD requests.
    pub get: u64,
    /// PUT requests, including multipart parts.
    pub put: u64,
    /// DELETE requests.
    pub delete: u64,
}

impl RequestCost {
    /// The requests made since `earlier` (a snapshot of the same counters).
    pub fn since(self, earlier: RequestCost) -> RequestCost {
        RequestCost {
            list: self.list.saturating_sub(earlier.list),
            get: self.get.saturating_sub(earlier.get),
            put: self.put.saturating_sub(earlier.put),
            delete: self.delete.saturating_sub(earlier.delete),
        }
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.list + self.get + self.put + self.delete
    }
}

impl std::ops::Add for RequestCost {
    type Output = RequestCost;

    fn add(self, other: RequestCost) -> RequestCost {
        RequestCost {
            list: self.list + other.list,
            get: self.get + other.get,
            put: self.put + other.put,
            delete: self.delete + other.delete,
        }
    }
}

impl std::ops::AddAssign for RequestCost {
    fn add_assign(&mut self, other: RequestCost) {
        *self = *self + other;
    }
}
