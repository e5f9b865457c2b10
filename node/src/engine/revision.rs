//! The store's revisions as readers and compaction see them.

use serde::{Deserialize, Serialize};

/// Why a revision cannot be read at, or compacted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RevisionError {
    #[error("revision {requested} is a future revision: the store is at revision {current}")]
    Future { requested: u64, current: u64 },
    #[error("revision {requested} has been compacted: history begins at revision {compacted}")]
    Compacted { requested: u64, compacted: u64 },
}

/// The compaction revision after asking to compact to `requested`, with the store at `current`
/// and compacted to `compacted`: etcd's rule, a revision above the store's or at or below the
/// compaction revision is refused.
pub fn compaction(requested: u64, current: u64, compacted: u64) -> Result<u64, RevisionError> {
    if requested > current {
        return Err(RevisionError::Future { requested, current });
    }
    if requested <= compacted {
        return Err(RevisionError::Compacted { requested, compacted });
    }
    Ok(requested)
}
