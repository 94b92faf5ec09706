//! The transform trait.

use crate::types::{Event, Manifest, PluginError};

/// A transform: one value per place in a source's chain, fed batches of events.
pub trait Transform: Sized + 'static {
    /// The plugin's description of itself.
    fn manifest() -> Manifest;

    /// Set up one instance from its JSON configuration (parse it with [`crate::json::config`]).
    fn configure(config: &str) -> Result<Self, PluginError>;

    /// Turn `events` into what goes on down the chain, pushed onto `out`.
    fn process(&mut self, events: Vec<Event>, out: &mut Vec<Event>) -> Result<(), PluginError>;

    /// Called when no event came for a while: a chance to close windows on time.
    fn tick(&mut self, now_us: i64, out: &mut Vec<Event>) -> Result<(), PluginError> {
        let _ = (now_us, out);
        Ok(())
    }

    /// The state this step keeps (open windows, counters) as bytes [`Transform::restore`]
    /// takes back, or `None` for none. The host calls it after every batch and tick whose
    /// output it stores, keeps it with the source's cursor in the same transaction, and gives
    /// it back wherever the source opens next (a restart, a hand-over, after a crash), so a
    /// window survives them. Keep it small: it is written with every batch.
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }

    /// Take back a state [`Transform::snapshot`] gave (called once, after `configure`,
    /// before any batch). A state that cannot be read is bad input: the step starts empty.
    fn restore(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let _ = state;
        Ok(())
    }
}
