//! Stand-ins for outside services, for tests here and in the other crates (feature `fake`):
//! real HTTP servers on loopback that behave like the documented APIs, faults included.

pub mod contabo;
