//! The HTTP layer: the accept loop both servers share, and the client every blocking caller
//! uses.
//!
//! `sleuth serve` (the OpenAI-compatible agent) and `sleuth retrieval-server` differ in their
//! routes, not in how they hold connections, so both run on one accept loop, [`server::serve`]:
//! it bounds the time a client may take to send its request headers and the number of
//! connections held at once, the two protections `axum::serve` leaves out (docs/reliability.md,
//! "Servers survive hostile clients").
//!
//! On the other side, [`client::Client`] is the one client of the six places that call out
//! (remote policy, retrieval-server backend, online search, LLM client, data fetch, `chat`):
//! its own runtime, its timeouts, and the one retry policy ([`client::RetryPolicy`]).

pub mod client;
pub mod server;
