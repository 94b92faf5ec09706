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
}
