//! Whether other server instances share this database. Until there is another instance, a
//! lone one pays nothing for being able to scale out: its frames do not go onto the bus
//! (nobody would read them), and the limits that protect accounts are counted in memory,
//! exactly, with no extra round trips to the database for its sends and stream starts.
//!
//! Set when the instance registers and finds others, when the bus first hears from another
//! instance (every instance announces itself there as it starts), or when the keep-alive
//! finds another live lease (should that announcement have been lost). Never cleared: after
//! a peer has come and gone, counting across instances is merely careful.

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
