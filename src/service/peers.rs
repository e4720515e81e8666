//! Whether other server instances share this database. The limits that protect accounts
//! are counted across instances only once there is another instance to count with: a lone
//! instance's own counts are exact, and its sends and stream starts then cost no extra
//! round trips to the database.
//!
//! Set when the instance registers and finds others, or when the bus first hears from
//! another instance (every instance announces itself there as it starts). Never cleared:
//! after a peer has come and gone, counting across instances is merely careful.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct Peers(Arc<AtomicBool>);

impl Peers {
    pub fn seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn mark(&self) {
        if !self.0.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "another server instance shares the database: limits are counted across instances"
            );
        }
    }
}
