//! The cluster layer's errors.

/// Why the cluster layer failed.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

pub(crate) fn err(m: impl Into<String>) -> ClusterError {
    ClusterError(m.into())
}
