//! What executing a plan costs in object-store requests, from the job
//! protocol.

use compactor_model::RequestCost;

/// What one batch costs to execute: the partition's lease (a GET and a
/// PUT to take it, the same to release it), a second look at the
/// manifests (one LIST), one GET per input, the recovery manifest (PUT,
/// DELETE), the output (one PUT, or parts + 2 and the upload's record (PUT,
/// DELETE) when larger than `multipart_threshold`, sized at most the inputs'
/// bytes), the commit (PUT, DELETE) and the inputs' deletion (the first
/// alone, the rest in bulk requests of up to 1,000 keys).
pub fn batch_cost(files: usize, bytes: u64, multipart_threshold: u64) -> RequestCost {
    let multipart = bytes > multipart_threshold;
    let output_puts = if multipart { bytes.div_ceil(multipart_threshold.max(1)) + 3 } else { 1 };
    let input_deletes = if files == 0 { 0 } else { 1 + (files as u64 - 1).div_ceil(1000) };
    RequestCost { list: 1, get: files as u64 + 2, put: 2 + 1 + 1 + output_puts, delete: input_deletes + 2 + u64::from(multipart) }
}

/// What marking the lease before the manifest costs `batches` jobs (a GET
/// and a PUT each), on stores where a write can land after its process is
/// gone (the store's late-write window).
pub fn lease_mark_cost(batches: usize) -> RequestCost {
    RequestCost { get: batches as u64, put: batches as u64, ..RequestCost::default() }
}

/// LIST pages needed for `keys` keys (at least one request).
pub fn list_pages(keys: usize) -> u64 {
    (keys as u64).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_costs_follow_the_job_protocol() {
        assert_eq!(batch_cost(30, 1000, 64 << 20), RequestCost { list: 1, get: 32, put: 5, delete: 4 });
        assert_eq!(batch_cost(2, 250, 100).put, 4 + 3 + 2 + 1, "three parts, create, complete and the upload's record");
        assert_eq!((list_pages(0), list_pages(1000), list_pages(1001)), (1, 1, 2));
        assert_eq!(lease_mark_cost(3), RequestCost { get: 3, put: 3, ..RequestCost::default() });
    }
}
