//! A limit on transport errors (no answer: timeouts, refused or reset connections, gateway
//! errors) within one stage of one run: once it is spent, the stage stops calling the
//! system and fails, instead of waiting out one timeout after another.

use std::sync::atomic::{AtomicU32, Ordering};

/// Default number of transport errors a stage tolerates.
pub const DEFAULT_TRANSPORT_ERROR_LIMIT: u32 = 20;

/// Transport errors left to a stage; shared by its concurrent requests.
#[derive(Debug)]
pub struct TransportBudget {
    limit: u32,
    spent: AtomicU32,
}

impl TransportBudget {
    /// A budget of `limit` errors (at least 1).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            spent: AtomicU32::new(0),
        }
    }

    /// Records one transport error.
    pub fn spend(&self) {
        // Saturating: never wraps, however many requests fail.
        let _ = self
            .spent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(1))
            });
    }

    /// True once `limit` errors were recorded: no further request should be made.
    pub fn exhausted(&self) -> bool {
        self.spent.load(Ordering::Relaxed) >= self.limit
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

impl Default for TransportBudget {
    fn default() -> Self {
        Self::new(DEFAULT_TRANSPORT_ERROR_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_after_exactly_limit_errors() {
        let b = TransportBudget::new(3);
        b.spend();
        b.spend();
        assert!(!b.exhausted());
        b.spend();
        assert!(b.exhausted());
        assert_eq!(b.limit(), 3);
        assert!(TransportBudget::new(0).limit() == 1);
    }
}
