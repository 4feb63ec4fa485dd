//! One module per subcommand.

pub mod hotspots;
pub mod manpages;
pub mod probes;
pub mod top;
pub mod watch;
