//! The HTTP layer both servers share.
//!
//! `sleuth serve` (the OpenAI-compatible agent) and `sleuth retrieval-server` differ in their
//! routes, not in how they hold connections, so both run on one accept loop, [`server::serve`]:
//! it bounds the time a client may take to send its request headers and the number of
//! connections held at once, the two protections `axum::serve` leaves out (docs/reliability.md,
//! "Servers survive hostile clients").

pub mod server;
